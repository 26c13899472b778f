"""Serving under wrk, beside the HTTP ceiling, the model limit and a naive server.

    python bench/serve.py [--model models/fashion-mnist] [--seconds 10] [--gallery 100000]

All in one run, one after another on this machine (wrk in its own process, one thread):
1. the model limit: the artifact's ONNX encoder offline in batches of 256, in this process;
2. the service (`python -m service`, micro-batching on): /embed with 1 image per request
   (multipart and raw image/png) at `--connections`, and with 64 images per request;
3. the naive server: the same, with LOOKALIKE_MICRO_BATCHING=false;
4. the HTTP ceiling: bench/bare_app.py on the same FastAPI + uvicorn, receiving the same bodies
   and answering the service's own response bytes, with no decoding and no model — minimal
   (Starlette's form parser, pre-encoded bytes), and the bare FastAPI endpoint a user would
   write (`files: list[UploadFile]`, a dict answer encoded by FastAPI);
5. /nearest (multipart file, k=10) at a `--gallery`-image gallery, filled over HTTP with
   Fashion-MNIST train + test + mirrored train images (all distinct);
6. overload: reliability.overload at 4× the connections, against a short queue.
Writes RESULTS/serve.json. Needs `wrk` (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from encoder_speed import images_per_second
from report import ROOT, add_results_argument, table, write

from reliability import overload, wrk
from service.encoder import load_encoder
from service.fashion_mnist import load_split
from service.imaging import encode_png
from tests.support import API_KEY, Server

BATCH_IMAGES = 64
CEILING = "HTTP ceiling"
BARE_FASTAPI = "bare FastAPI"


class BareServer(Server):
    """bench/bare_app.py in a subprocess: the HTTP ceiling."""

    def __init__(self, responses: Path) -> None:
        super().__init__(ROOT / "models" / "fashion-mnist", responses)
        self.responses = responses

    def command(self) -> list[str]:
        app = str(ROOT / "bench" / "bare_app.py")
        return [sys.executable, app, "--port", str(self.port), "--responses", str(self.responses)]


def requests(images: np.ndarray) -> dict[str, tuple[bytes, str, int]]:
    """The /embed request bodies: name → (body, content type, images in it)."""
    one = encode_png(images[0])
    many = [(f"{i}.png", encode_png(image)) for i, image in enumerate(images[:BATCH_IMAGES])]
    return {
        "embed 1 image, multipart": (*wrk.multipart([("0.png", one)]), 1),
        "embed 1 image, raw image/png": (one, "image/png", 1),
        f"embed {BATCH_IMAGES} images, multipart": (*wrk.multipart(many), BATCH_IMAGES),
    }


def load(base: str, path, bodies: dict, args: argparse.Namespace, server: str) -> list[dict]:
    """wrk against each request body; `path` maps (content type, images) → the URL's path."""
    rows = []
    for name, (body, kind, count) in bodies.items():
        connections = args.connections if count == 1 else args.batch_connections
        result = wrk.run(
            base + path(kind, count), body, kind, connections=connections, seconds=args.seconds
        )
        row = {
            "server": server,
            "request": name,
            "connections": connections,
            "requests_per_s": result["rps"],
            "images_per_s": result["rps"] * count,
            **{p: result[p] for p in ("p50_ms", "p95_ms", "p99_ms")},
            "statuses": result["statuses"],
            "socket_errors": result["socket_errors"],
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def gallery_images(size: int) -> np.ndarray:
    train, test = load_split("train")[0], load_split("test")[0]
    mirrored = train[:, :, ::-1]
    images = np.concatenate([train, test, mirrored])
    if size > len(images):
        raise SystemExit(f"--gallery at most {len(images)} distinct Fashion-MNIST images")
    return images[:size]


def fill(url: str, images: np.ndarray) -> float:
    """Upload over HTTP, 256 per request; returns images/s."""
    start = time.perf_counter()
    with httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as client:
        for s in range(0, len(images), 256):
            files = [
                ("files", (f"{i}.png", encode_png(images[i]), "image/png"))
                for i in range(s, min(s + 256, len(images)))
            ]
            client.post(f"{url}/images", files=files).raise_for_status()
    return len(images) / (time.perf_counter() - start)


def settled(url: str, *, approximate: bool, timeout_s: float = 600) -> dict:
    """/readyz once the index holds every image and, past the service's default size, is HNSW."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/readyz", timeout=30).json()
        kind_ok = status["index_kind"] == "hnsw" or not approximate
        if kind_ok and status["indexed"] == status["images"]:
            return status
        time.sleep(0.5)
    raise TimeoutError(f"index did not settle: {status}")


def nearest(model: Path, args: argparse.Namespace, query: bytes) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(model, Path(tmp) / "data")
        server.start()
        try:
            upload_rate = fill(server.url, gallery_images(args.gallery))
            status = settled(server.url, approximate=args.gallery >= 100_000)
            body, kind = wrk.multipart([("query.png", query)], field="file")
            result = wrk.run(
                f"{server.url}/nearest",
                body,
                kind,
                connections=args.connections,
                seconds=args.seconds,
            )
        finally:
            server.stop()
    return {
        "server": "service",
        "request": f"nearest k=10, {status['images']:,} images ({status['index_kind']})",
        "connections": args.connections,
        "requests_per_s": result["rps"],
        **{p: result[p] for p in ("p50_ms", "p95_ms", "p99_ms")},
        "statuses": result["statuses"],
        "socket_errors": result["socket_errors"],
        "upload_images_per_s": upload_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "fashion-mnist")
    parser.add_argument("--seconds", type=float, default=10.0, help="per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch-connections", type=int, default=4, help="for 64-image requests")
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--overload-seconds", type=float, default=30.0)
    add_results_argument(parser)
    args = parser.parse_args()
    wrk.require_wrk()

    model_limit = images_per_second(load_encoder(args.model), 256, args.seconds)
    print(json.dumps({"model_limit_images_per_s": model_limit}), file=sys.stderr)
    images = load_split("test")[0]
    bodies = requests(images)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        responses = Path(tmp) / "responses"
        responses.mkdir()
        for name, env in (("service", {}), ("naive", {"LOOKALIKE_MICRO_BATCHING": "false"})):
            server = Server(args.model, Path(tmp) / name, **env)
            server.start()
            try:
                for body, kind, count in bodies.values():
                    answer = httpx.post(
                        f"{server.url}/embed", content=body, headers={"Content-Type": kind}
                    )
                    (responses / f"{count}.json").write_bytes(answer.raise_for_status().content)
                rows += load(server.url, lambda kind, n: "/embed", bodies, args, name)
            finally:
                server.stop()
        bare = BareServer(responses)
        bare.start()
        try:
            rows += load(bare.url, lambda kind, n: "/minimal/embed", bodies, args, CEILING)
            rows += load(
                bare.url,
                lambda kind, n: "/fastapi/embed-raw" if kind == "image/png" else "/fastapi/embed",
                bodies,
                args,
                BARE_FASTAPI,
            )
        finally:
            bare.stop()
    ceiling = {r["request"]: r["requests_per_s"] for r in rows if r["server"] == CEILING}
    bare = {r["request"]: r["requests_per_s"] for r in rows if r["server"] == BARE_FASTAPI}
    for row in rows:
        row["vs_ceiling"] = row["requests_per_s"] / ceiling[row["request"]]
        row["vs_bare_fastapi"] = row["requests_per_s"] / bare[row["request"]]
        row["vs_model_limit"] = row["images_per_s"] / model_limit
    rows.append(nearest(args.model, args, encode_png(images[0])))
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    shed = overload.measure(
        args.model, factor=4, seconds=args.overload_seconds, queue=overload.QUEUE
    )

    print(f"\nmodel limit (ONNX offline, batch 256): {model_limit:,.0f} images/s")
    print(
        table(
            rows,
            [
                ("server", "server"),
                ("request", "request"),
                ("connections", "conns"),
                ("requests_per_s", "req/s"),
                ("images_per_s", "images/s"),
                ("p50_ms", "p50 ms"),
                ("p95_ms", "p95 ms"),
                ("p99_ms", "p99 ms"),
                ("vs_ceiling", "÷ ceiling"),
                ("vs_bare_fastapi", "÷ bare FastAPI"),
                ("vs_model_limit", "÷ model"),
            ],
        )
    )
    burst = shed["overload"]
    print(
        f"\noverload ({shed['overload_connections']} connections, {args.overload_seconds:g} s): "
        f"statuses {burst['statuses']}, 503 without Retry-After {burst['missing_retry_after']}, "
        f"served p99 ≤ {shed['served_p99_ms_at_most']:g} ms, alive {shed['alive_after']}, "
        f"RSS {shed['rss_mb_before']} → {shed['rss_mb_after']} MB"
    )
    write(
        args.results,
        "serve",
        {
            "model_limit_images_per_s": model_limit,
            "rows": rows,
            "overload": shed,
            "config": {k: str(v) for k, v in vars(args).items()},
        },
    )
    non_2xx = [r for r in rows if set(r["statuses"]) - {"200"} or r["socket_errors"]]
    if non_2xx or not shed["passed"]:
        raise SystemExit(f"error: non-2xx answers or socket errors: {non_2xx or shed}")


if __name__ == "__main__":
    main()
