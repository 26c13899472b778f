"""Precision@10 of /nearest on real Fashion-MNIST images, beside raw pixels on the same gallery.

    python bench/nearest_precision.py [--model DIR] [--gallery 1000] [--queries 300]

Starts `python -m service` with a temporary data dir and an API key, uploads `--gallery` train
images with client ids and {"label": …} metadata, asks /nearest (k=10) for `--queries` test
images, and counts neighbours of the query's class. The raw-pixel baseline ranks the same gallery
by cosine score of the raw pixels. Also checks /embed against ONNX Runtime and /similarity's shape.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from report import add_results_argument, write

from service.fashion_mnist import FASHION_MNIST_CLASSES, load_split
from service.imaging import encode_png
from testkit.server import API_KEY, Server


def pixel_precision(
    gallery: np.ndarray, g_labels: np.ndarray, queries: np.ndarray, q_labels: np.ndarray, k: int
) -> float:
    def unit(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1).astype(np.float64)
        return flat / np.linalg.norm(flat, axis=1, keepdims=True)

    top = np.argsort(-(unit(queries) @ unit(gallery).T), axis=1)[:, :k]
    return float((g_labels[top] == q_labels[:, None]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/fashion-mnist"))
    parser.add_argument("--gallery", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=300)
    add_results_argument(parser)
    args = parser.parse_args()
    train_x, train_y = load_split("train")
    test_x, test_y = load_split("test")
    gallery, g_labels = train_x[: args.gallery], train_y[: args.gallery]
    queries, q_labels = test_x[: args.queries], test_y[: args.queries]
    with tempfile.TemporaryDirectory() as data_dir:
        server = Server(args.model, Path(data_dir))
        server.start()
        try:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                auth = {"Authorization": f"Bearer {API_KEY}"}
                for start in range(0, len(gallery), 100):
                    batch = range(start, min(start + 100, len(gallery)))
                    response = client.post(
                        "/images",
                        headers=auth,
                        files=[
                            ("files", (f"g{i}.png", encode_png(gallery[i]), "image/png"))
                            for i in batch
                        ],
                        data={
                            "ids": [f"g{i}" for i in batch],
                            "metadata": [
                                json.dumps({"label": FASHION_MNIST_CLASSES[g_labels[i]]})
                                for i in batch
                            ],
                        },
                    )
                    response.raise_for_status()
                hits = 0
                for image, label in zip(queries, q_labels, strict=True):
                    results = client.post(
                        "/nearest", data={"k": "10"}, files=[("file", ("q.png", encode_png(image)))]
                    ).json()["results"]
                    hits += sum(
                        r["metadata"]["label"] == FASHION_MNIST_CLASSES[label] for r in results
                    )
                ours = hits / (10 * len(queries))
                sample = [encode_png(image) for image in queries[:16]]
                served = np.array(
                    client.post("/embed", files=[("files", ("e.png", b)) for b in sample]).json()[
                        "embeddings"
                    ]
                )
                session = ort.InferenceSession(str(args.model / "encoder.onnx"))
                direct = session.run(
                    None, {"images": queries[:16].transpose(0, 3, 1, 2).astype(np.float32) / 255}
                )[0]
                scores = np.array(
                    client.post(
                        "/similarity", files=[("files", ("s.png", b)) for b in sample[:5]]
                    ).json()["scores"]
                )
        finally:
            server.stop()
    pixels = pixel_precision(gallery, g_labels, queries, q_labels, 10)
    print(f"gallery {len(gallery)} train images, {len(queries)} test queries, k=10")
    print(f"{'':<22}{'precision@10':>14}")
    print(f"{'lookalike /nearest':<22}{ours:>14.4f}")
    print(f"{'raw pixels (cosine)':<22}{pixels:>14.4f}")
    print(f"{'gain':<22}{ours - pixels:>+14.4f}")
    print(f"/embed vs ONNX Runtime max |diff|: {np.abs(served - direct).max():.2e}")
    asymmetry, diagonal = np.abs(scores - scores.T).max(), np.diag(scores).min()
    print(f"/similarity {scores.shape}, max asymmetry {asymmetry:.1e}, diagonal {diagonal:.6f}")
    write(
        args.results,
        "nearest_precision",
        {
            "gallery": len(gallery),
            "queries": len(queries),
            "precision_at_10": {"lookalike": ours, "raw_pixels": pixels},
            "embed_vs_onnx_max_abs_diff": float(np.abs(served - direct).max()),
            "similarity_max_asymmetry": float(asymmetry),
        },
    )


if __name__ == "__main__":
    main()
