"""Search index kinds side by side: build time, memory, latency and recall@10 against exact.

    python bench/search.py [--model models/fashion-mnist] [--sizes 100000,1000000] [--dim 128]

Vectors are the artifact's embeddings of the Fashion-MNIST train images (60k; `--dim` keeps
that many leading whitened-PCA dims, renormalised), then noisy copies of them up to each size
(noise σ 0.02 per dim). Queries are the first `--queries` test images, which the corpus never
holds. Every index is the service's own `VectorIndex`, so the numbers describe what the
service runs; memory is the size of its serialised index. Searches are one query at a time
(k=10), as /nearest runs them. Writes RESULTS/search.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np
from report import add_results_argument, table, write

from service.encoder import load_encoder
from service.fashion_mnist import load_split
from service.index import VectorIndex, snapshot_bytes
from service.store.base import RowBatch

K = 10


def embeddings(model: Path, split: str, dim: int | None) -> np.ndarray:
    """A Fashion-MNIST split through the artifact; `dim` keeps the leading (PCA) dims."""
    encoder = load_encoder(model)
    images = load_split(split)[0]
    vectors = np.concatenate(
        [encoder.embed_pixels(list(images[i : i + 1024])) for i in range(0, len(images), 1024)]
    )[:, :dim]
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def corpus(base: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """`base` first, then noisy copies of random rows up to `size` (unit vectors)."""
    if size <= len(base):
        return base[:size]
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(base), size - len(base))
    copies = base[rows] + rng.normal(0, 0.02, (len(rows), base.shape[1])).astype(np.float32)
    return np.concatenate([base, copies / np.linalg.norm(copies, axis=1, keepdims=True)])


def measure(index: VectorIndex, queries: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
    found, latencies = [], []
    for q in queries:
        start = time.perf_counter()
        hits = index.search(q[None, :], K)[0]
        latencies.append(time.perf_counter() - start)
        found.append([int(hit.id) for hit in hits])
    return found, np.array(latencies) * 1000


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/fashion-mnist"))
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dim", type=int, help="leading dims kept (default: all)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--ef", default="32,64,96,192")
    add_results_argument(parser)
    args = parser.parse_args()
    base = embeddings(args.model, "train", args.dim)
    queries = embeddings(args.model, "test", args.dim)[: args.queries]
    faiss.omp_set_num_threads(2)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        vectors = corpus(base, size)
        labels = np.arange(size, dtype=np.int64)
        configs = [("flat", {})] + [("hnsw", {"ef_search": int(ef)}) for ef in args.ef.split(",")]
        truth: list[list[int]] = []
        built: dict[str, tuple[VectorIndex, float]] = {}
        for kind, options in configs:
            if kind not in built:
                start = time.perf_counter()
                index = VectorIndex(
                    vectors.shape[1], kind, hnsw_m=args.m, ef_construction=args.ef_construction
                )
                index.add(RowBatch(labels, vectors, [str(n) for n in labels], ["{}"] * size))
                built[kind] = (index, time.perf_counter() - start)
            index, build_s = built[kind]
            if kind == "hnsw":
                faiss.downcast_index(index._index.index).hnsw.efSearch = options["ef_search"]
            found, ms = measure(index, queries)
            if kind == "flat":
                truth = found
            memory_mb = len(snapshot_bytes({"bench": index}, seq=0, model_version="bench")) / 2**20
            rows.append(
                {
                    "vectors": size,
                    "dim": vectors.shape[1],
                    "kind": kind,
                    **options,
                    "build_s": round(build_s, 2),
                    "memory_mb": round(memory_mb, 1),
                    "p50_ms": round(float(np.percentile(ms, 50)), 3),
                    "p99_ms": round(float(np.percentile(ms, 99)), 3),
                    "recall_at_10": round(recall(found, truth), 4),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    columns = [
        ("vectors", "vectors"),
        ("dim", "dim"),
        ("kind", "kind"),
        ("ef_search", "efSearch"),
        ("build_s", "build s"),
        ("memory_mb", "MB"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("recall_at_10", "recall@10"),
    ]
    print("\n" + table(rows, columns))
    write(
        args.results, "search", {"m": args.m, "ef_construction": args.ef_construction, "rows": rows}
    )


if __name__ == "__main__":
    main()
