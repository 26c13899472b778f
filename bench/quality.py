"""Embedding quality on Fashion-MNIST: the artifact beside a random-init twin and raw pixels.

    python bench/quality.py models/fashion-mnist [--limit N]

Three feature sets, every metric computed the same way on each (training/evaluate.py):
- the artifact, embedded through the service's own ONNX encoder;
- a random-init encoder of the same architecture (model.json's, seed 0), with
  its PCA-whitening fitted on the train images exactly as training does (no labels);
- raw pixels (784 values in [0, 1]).
Metrics: kNN top-1 (k=200/T=0.1, k=20/T=0.07), recall@1 and mAP@R, and a linear probe:
multinomial logistic regression (scikit-learn, lbfgs, C=1, at most 5,000 iterations,
standardised features) fitted on the frozen train features and scored on the test set.
Writes RESULTS/quality.json.

    python bench/quality.py models/fashion-mnist --dimensions 32 64 128 256

What `dimensions` costs (/embed and /v1/embeddings): the artifact's vectors cut to their first
D components and renormalised (service.encoder.truncate, as the service serves them), each
scored beside the full vectors with the same kNN and retrieval metrics (no linear probe).
Writes RESULTS/quality_dimensions.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from report import add_results_argument, table, write
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from service.encoder import truncate
from training.data import Dataset, load_fashion_mnist
from training.encoder import EncoderConfig
from training.evaluate import all_metrics, onnx_embedder, pixel_features
from training.features import random_init_model, torch_embedder


def random_init_features(artifact: Path, train: Dataset, test: Dataset) -> tuple[np.ndarray, ...]:
    """The artifact's architecture at seed 0, whitened on the train images as training does."""
    architecture = json.loads((artifact / "model.json").read_text())["architecture"]
    embed = torch_embedder(random_init_model(EncoderConfig.from_dict(architecture), train.images))
    return embed(train.images), embed(test.images)


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    scaler = StandardScaler().fit(train_x)
    probe = LogisticRegression(C=1.0, max_iter=5000)
    probe.fit(scaler.transform(train_x), train_y)
    return float(probe.score(scaler.transform(test_x), test_y))


def score(
    features: dict[str, tuple[np.ndarray, np.ndarray]], train: Dataset, test: Dataset, probe: bool
) -> dict[str, dict[str, float]]:
    """Every metric of every feature set, computed the same way."""
    results: dict[str, dict[str, float]] = {}
    for name, (train_x, test_x) in features.items():
        start = time.perf_counter()
        metrics = all_metrics(
            torch.from_numpy(train_x),
            torch.from_numpy(train.labels),
            torch.from_numpy(test_x),
            torch.from_numpy(test.labels),
        )
        if probe:
            metrics["linear_probe"] = linear_probe(train_x, train.labels, test_x, test.labels)
        results[name] = metrics
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--limit", type=int, help="train and test images (smoke runs)")
    parser.add_argument(
        "--dimensions",
        type=int,
        nargs="+",
        metavar="D",
        help="score the vectors cut to their first D components instead (each beside the full)",
    )
    add_results_argument(parser)
    args = parser.parse_args()
    train = load_fashion_mnist("train").subset(args.limit)
    test = load_fashion_mnist("test").subset(args.limit)
    embed = onnx_embedder(args.artifact)
    model = embed(train.images), embed(test.images)
    full = model[0].shape[1]
    if args.dimensions:
        if not all(1 <= d <= full for d in args.dimensions):
            parser.error(f"--dimensions must be between 1 and the model's {full}")
        features = {f"{full} (full)": model}
        for d in sorted(set(args.dimensions) - {full}, reverse=True):
            features[str(d)] = truncate(model[0], d), truncate(model[1], d)
    else:
        features = {
            "model": model,
            "random init": random_init_features(args.artifact, train, test),
            "raw pixels": tuple(pixel_features(x.images).numpy() for x in (train, test)),
        }
    results = score(features, train, test, probe=not args.dimensions)
    names = list(results)
    rows = [
        {"metric": metric, **{name: results[name][metric] for name in names}}
        for metric in results[names[0]]
    ]
    columns = [("metric", "metric")] + [(name, name) for name in names]
    if args.dimensions:  # each prefix as a ratio of the full vectors' score
        for row in rows:
            row.update({f"{n} ÷ full": row[n] / row[names[0]] for n in names[1:]})
        columns += [(f"{n} ÷ full", f"{n} ÷ full") for n in names[1:]]
    print(f"\nFashion-MNIST: {len(train):,} train, {len(test):,} test images; {args.artifact}")
    print(table(rows, columns))
    write(
        args.results,
        "quality_dimensions" if args.dimensions else "quality",
        {
            "artifact": str(args.artifact),
            "train_images": len(train),
            "test_images": len(test),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
