"""A big gallery on one replica: time to ready, and each worker's memory, with 1, 2 and 4 workers.

    python bench/big_gallery.py [--images 1000000] [--workers 1,2,4] [--queries 2000]

Fills a SQLite data dir through the store itself (uploading a million images over HTTP takes
hours on 2 cores): bench/search.py's corpus as the vectors (the shipped model's embeddings of
Fashion-MNIST and of augmented copies), one 28×28 PNG as every row's original (content-addressed,
so stored once), metadata {"label": i % 10, "n": i}. Then runs `python -m service --workers N`:
- the first start finds no index generation and writes one from the rows: what a new model or a
  lost data dir costs;
- for each N: a restart's time to ready (mapping the generation, reading its checksums back),
  then `--queries` /nearest requests by id (half of them with a filter on "label"), each on a
  fresh connection so that every worker answers some, then each worker's memory from
  /proc/PID/smaps_rollup: anonymous (its heap), private (what only it maps) and Pss (shared
  pages split among the processes mapping them; summed, the service's resident memory with the
  mapped generation counted once).
Counts how many queried images are their own top hit (an approximate index misses a few: an
HNSW node the graph barely reaches), and checks that every filtered hit matches.
Writes RESULTS/big_gallery.json.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from report import ROOT, add_results_argument, scratch, table, write
from search import corpus, numbers
from worker_memory import memory

from service.config import Settings
from service.encoder import load_encoder
from service.store import NewImage, open_store
from testkit.images import png_bytes
from testkit.server import Server

BATCH = 5_000


def fill(data_dir: Path, model: Path, vectors: np.ndarray) -> float:
    """Store every vector as an image's; the seconds it took."""
    settings = Settings(model_dir=model, data_dir=data_dir)
    version = load_encoder(model).info.version
    store = open_store(settings)
    store.migrate()  # the schema, as the service creates it on start
    image = png_bytes(0)
    started = time.monotonic()
    try:
        for start in range(0, len(vectors), BATCH):
            store.upsert(
                [
                    NewImage(f"img{i}", image, "PNG", {"label": i % 10, "n": i}, vectors[i])
                    for i in range(start, min(start + BATCH, len(vectors)))
                ],
                version,
            )
            if start % 100_000 == 0:
                print(f"stored {start:,} of {len(vectors):,}", flush=True)
    finally:
        store.close()
    return time.monotonic() - started


def query(
    server: Server, images: int, count: int, rng: np.random.Generator
) -> list[tuple[float, bool]]:
    """`count` /nearest by id, half filtered, each on its own connection: per request, its
    seconds and whether the image was its own top hit (an approximate index may miss a few)."""

    def one(i: int, filtered: bool) -> tuple[float, bool]:
        label = i % 10
        body: dict = {"id": f"img{i}", "k": 10}
        if filtered:
            body["filter"] = {"label": label}
        started = time.monotonic()
        response = httpx.post(server.url + "/nearest", json=body, timeout=60)
        took = time.monotonic() - started
        response.raise_for_status()
        hits = response.json()["results"]
        assert "filter" not in body or all(h["metadata"]["label"] == label for h in hits)
        return took, hits[0]["id"] == f"img{i}"

    picked = rng.integers(0, images, count).tolist()
    filtered = (rng.random(count) < 0.5).tolist()
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, picked, filtered))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "fashion-mnist")
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--originals", type=int, default=60_000, help="train images augmented")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "results" / "cache")
    parser.add_argument(
        "--data", type=Path, help="a data dir this script filled before: no fill, no first start"
    )
    add_results_argument(parser)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    result: dict = {"images": args.images, "rows": []}
    with scratch() as tmp:
        data = args.data or Path(tmp) / "data"
        if args.data is None:
            vectors = corpus(load_encoder(args.model), args.images, args.originals, 0, args.cache)
            result["fill_s"] = round(fill(data, args.model, vectors), 1)
            del vectors
        for n, workers in enumerate(numbers(args.workers, int)):
            server = Server(args.model, data, LOOKALIKE_WORKERS=str(workers))
            ready_s = server.start(timeout_s=3600)
            if n == 0 and args.data is None:
                result["first_start_s"] = round(ready_s, 1)  # the generation written
                server.stop()
                ready_s = server.start(timeout_s=600)
            try:
                answers = query(server, args.images, args.queries, rng)
                used = memory(server)
                status = httpx.get(server.url + "/readyz", timeout=10).json()
            finally:
                server.stop()
            result["index_kind"] = status["index_kind"]
            result["rows"].append(
                {
                    "workers": workers,
                    "ready_s": round(ready_s, 2),
                    "nearest_p50_ms": round(
                        float(np.percentile([a[0] for a in answers], 50)) * 1000, 2
                    ),
                    "own_top_hit": f"{sum(a[1] for a in answers)} of {len(answers)}",
                    "anonymous_mb": [round(m["anonymous"] / 2**20) for m in used.values()],
                    "private_mb": [round(m["private"] / 2**20) for m in used.values()],
                    "pss_mb": [round(m["pss"] / 2**20) for m in used.values()],
                    "service_pss_mb": round(sum(m["pss"] for m in used.values()) / 2**20),
                }
            )
            print(json.dumps(result["rows"][-1]), flush=True)
    print("\n" + table(result["rows"], [(key, key) for key in result["rows"][0]]))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    write(args.results, "big_gallery", result)


if __name__ == "__main__":
    main()
