"""Filtered search while writes arrive: a range-filtered search, as /nearest runs it, while
upserts keep changing the field it filters on.

    python bench/filter_writes.py [--sizes 100000,1000000] [--writes-per-s 10] [--seconds 20]
        [--share 0.01]

Each size builds the service's `VectorIndex` of kind HNSW, as the service runs it from 100k
images (a write is then an insert and a tombstone; flat's removal alone takes ~0.2 s at 1M),
over random unit vectors. The graph is built cheaply (M 8, efConstruction 16): the filter's
matches (at most 20,000, `brute_force_max_matches` fixed there) are scored directly and the
graph is never walked. Each image has metadata {"price": p}, p uniform in [0, 1). One thread
searches back to back, k=10, with the filter {"price": {"$lt": share}} under the index's read
lock, as IndexView.search does. Another upserts
a random image with a new price `--writes-per-s` times a second under the write lock, as a
worker applies a change from the log. Reports the search p50/p99 with and without the writes,
and the write p50/p99. Run it from another checkout to measure that code (BENCHMARKS.md: before
and after). Writes RESULTS/filter_writes.json.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from report import add_results_argument, table, write

from service.collection_index import CollectionIndex
from service.filters import parse_filter
from service.generation import Generations, PartSource
from service.index_options import IndexOptions
from service.store.base import Change, IndexedRow, RowBatch

DIM = 256
K = 10
COLUMNS = [
    ("size", "images"),
    ("writes_per_s", "writes/s"),
    ("searches", "searches"),
    ("search_p50_ms", "search p50 ms"),
    ("search_p99_ms", "p99 ms"),
    ("write_p50_ms", "write p50 ms"),
    ("write_p99_ms", "p99 ms"),
]


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def rows(size: int, rng: np.random.Generator) -> Iterator[RowBatch]:
    chunk = 100_000
    for start in range(0, size, chunk):
        n = min(chunk, size - start)
        labels = np.arange(start + 1, start + n + 1, dtype=np.int64)
        yield RowBatch(
            labels,
            unit_vectors(rng, n),
            [f"img{label}" for label in labels.tolist()],
            [f'{{"price":{price!r}}}' for price in rng.random(n).tolist()],
        )


def build(size: int, rng: np.random.Generator, folder: Path) -> CollectionIndex:
    options = IndexOptions(
        kind="hnsw", hnsw_m=8, ef_construction=16, brute_force_max_matches=20_000
    )  # what is measured is the filter under writes, scored directly: the same plan throughout
    generations = Generations(folder, DIM, options, "bench")
    with generations.writing(wait=True):
        generations.write(size, {"bench": PartSource(size, rows(size, rng), {})})
    generation = generations.open_current()
    assert generation is not None
    return CollectionIndex(DIM, options, generation.parts["bench"], size)


def percentiles(seconds: list[float]) -> tuple[float, float]:
    if not seconds:
        return float("nan"), float("nan")
    ms = np.array(seconds) * 1000
    return round(float(np.percentile(ms, 50)), 3), round(float(np.percentile(ms, 99)), 3)


def run(index: CollectionIndex, size: int, args: argparse.Namespace, writes_per_s: float) -> dict:
    rng = np.random.default_rng(1)
    where = parse_filter({"price": {"$lt": args.share}})
    queries = unit_vectors(rng, 64)
    with index.lock.read():
        index.search(queries[:1], K, where)  # the first search sorts the prices once
    live = np.arange(1, size + 1, dtype=np.int64)  # each image's current label
    stop, write_seconds = threading.Event(), []

    def writer() -> None:
        seq = index.seq
        while not stop.wait(1 / writes_per_s):
            seq += 1
            slot = int(rng.integers(size))
            change = Change(
                seq=seq,
                collection="default",
                old_seq=int(live[slot]),
                row=IndexedRow(
                    f"img{slot + 1}", f'{{"price":{rng.random()!r}}}', unit_vectors(rng, 1)[0]
                ),
            )
            started = time.perf_counter()
            with index.lock.write():
                index.apply(change)
            write_seconds.append(time.perf_counter() - started)
            live[slot] = seq

    thread = threading.Thread(target=writer) if writes_per_s else None
    if thread is not None:
        thread.start()
    search_seconds, deadline = [], time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        query = queries[len(search_seconds) % len(queries)][None, :]
        started = time.perf_counter()
        with index.lock.read():
            hits = index.search(query, K, where)
        search_seconds.append(time.perf_counter() - started)
        assert len(hits[0]) == K
    stop.set()
    if thread is not None:
        thread.join()
    p50, p99 = percentiles(search_seconds)
    w50, w99 = percentiles(write_seconds)
    return {
        "size": size,
        "writes_per_s": writes_per_s,
        "searches": len(search_seconds),
        "search_p50_ms": p50,
        "search_p99_ms": p99,
        "write_p50_ms": w50,
        "write_p99_ms": w99,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--writes-per-s", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--share", type=float, default=0.01, help="images the filter matches")
    add_results_argument(parser)
    args = parser.parse_args()
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            index = build(size, np.random.default_rng(0), Path(folder))
            print(f"built {size:,} in {time.perf_counter() - started:.1f} s", flush=True)
            for rate in (0.0, args.writes_per_s):
                results.append(run(index, size, args, rate))
                print(results[-1], flush=True)
            del index
    print("\n" + table(results, COLUMNS))
    write(
        args.results,
        "filter_writes",
        {"share": args.share, "seconds": args.seconds, "rows": results},
    )


if __name__ == "__main__":
    main()
