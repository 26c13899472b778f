"""The compressed kind (`ivf`) on a realistic corpus: build time, memory, recall, latency.

    python bench/compressed.py [--sizes 1000000,2000000] [--nprobe 8,16,32,64,128]
        [--selectivities 0.5,0.05,0.02,0.005]

Corpus and queries: bench/search.py's (embeddings of Fashion-MNIST train images and of
augmented copies of them, cached; queries are test images the corpus never holds), with the same
{"bucket": b} metadata for range filters. Each size is written as a generation's part would be
(`write_part`, as the service's compaction writes it: ids, metadata, filters, the exact vectors
and the IVF index), then opened and searched in a fresh process of its own, the way a worker maps
it, one query at a time with k=10 on 2 FAISS threads:
- unfiltered, at each `--nprobe`: p50/p99 ms and recall@10 against exact search (numpy);
- filtered at each selectivity, at the service's nprobe, as /nearest runs it (the plan the
  service picks): p50/p99 and recall@10 against the exact top 10 among the matches;
- memory: the process's resident set (`/proc/self/smaps_rollup`: Rss, of it Anonymous) before
  the part is opened and after every search above; mapped pages count there once they are read.
Writes RESULTS/compressed.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from report import ROOT, add_results_argument, table, write
from search import BUCKETS, K, corpus, embed, exact, measure, numbers, recall

from service.encoder import load_encoder
from service.fashion_mnist import load_split
from service.filters import parse_filter
from service.index import IndexOptions, ivf_lists
from service.mapped_index import MappedIndex, write_part
from service.store.base import RowBatch

OPTIONS = IndexOptions(kind="ivf")  # the service's defaults otherwise
CHUNK = 100_000


def memory_kb() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Rss", "Anonymous"):
            fields[name.lower()] = int(value.split()[0])
    return fields


def write_corpus_part(vectors: np.ndarray, buckets: np.ndarray, folder: Path) -> float:
    """The part of these rows, as compaction writes it; seconds taken."""

    def rows():
        for start in range(0, len(vectors), CHUNK):
            labels = np.arange(start, min(start + CHUNK, len(vectors)), dtype=np.int64)
            yield RowBatch(
                labels,
                vectors[labels],
                [str(n) for n in labels.tolist()],
                [f'{{"bucket":{b}}}' for b in buckets[labels].tolist()],
            )

    folder.mkdir()
    start = time.perf_counter()
    write_part(folder, None, rows(), {})
    return time.perf_counter() - start


def search_part(folder: Path, queries: np.ndarray, job: dict) -> dict:
    """In a fresh process: open the part as a worker does and measure (the module docstring)."""
    faiss.omp_set_num_threads(2)
    before = memory_kb()
    part = MappedIndex(folder, "ivf", OPTIONS)
    opened = memory_kb()
    unfiltered = []
    for nprobe in job["nprobe"]:
        part.tune(ivf_nprobe=nprobe)
        found, latency = measure(lambda q: part.search(q, K)[0], queries)
        unfiltered.append({"nprobe": nprobe, **latency, "found": found})
    part.tune(ivf_nprobe=OPTIONS.ivf_nprobe)
    filtered = []
    for cut in job["cuts"]:
        where = parse_filter({"bucket": {"$lt": cut}})
        found, latency = measure(lambda q, w=where: part.search(q, K, w)[0], queries)
        matches = int(np.count_nonzero(part.matching(where)))
        filtered.append({"cut": cut, "plan": part.plan(matches), **latency, "found": found})
    return {
        "before": before,
        "opened": opened,
        "after": memory_kb(),
        "unfiltered": unfiltered,
        "filtered": filtered,
    }


def measure_size(vectors, queries, shares, nprobes, seed) -> tuple[dict, list[dict], list[dict]]:
    size = len(vectors)
    buckets = np.random.default_rng([seed, size]).permutation(size) * BUCKETS // size
    cuts = [round(share * BUCKETS) for share in shares]
    with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "results") as tmp:
        folder = Path(tmp) / "part"
        print(f"writing the ivf part of {size:,} vectors ({ivf_lists(size)} lists)", flush=True)
        build_s = write_corpus_part(vectors, buckets, folder)
        disk = {p.name: p.stat().st_size for p in folder.rglob("*") if p.is_file()}
        print(f"written in {build_s:.0f} s; searching it in a fresh process", flush=True)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            got = pool.apply(search_part, (folder, queries, {"nprobe": nprobes, "cuts": cuts}))
        shutil.rmtree(folder)
    truth = exact(vectors, queries, np.arange(size))
    rss_kb = got["after"]["rss"] - got["before"]["rss"]
    summary = {
        "vectors": size,
        "lists": ivf_lists(size),
        "build_s": round(build_s, 1),
        "index_mb": round(disk["index.faiss"] / 2**20, 1),
        "files_mb": round(sum(disk.values()) / 2**20, 1),
        "rss_mb_before": round(got["before"]["rss"] / 1024, 1),
        "rss_mb_after": round(got["after"]["rss"] / 1024, 1),
        "anonymous_mb_after": round(got["after"]["anonymous"] / 1024, 1),
        "resident_b_per_image": round(rss_kb * 1024 / size),
        "process_b_per_image": round(got["after"]["rss"] * 1024 / size),
    }
    print(json.dumps(summary), flush=True)
    unfiltered = []
    for row in got["unfiltered"]:
        found = row.pop("found")
        unfiltered.append({"vectors": size, **row, "recall_at_10": recall(found, truth)})
        print(json.dumps(unfiltered[-1]), flush=True)
    filtered = []
    for share, row in zip(shares, got["filtered"], strict=True):
        cut, found = row.pop("cut"), row.pop("found")
        among = exact(vectors, queries, np.flatnonzero(buckets < cut))
        filtered.append(
            {
                "vectors": size,
                "selectivity": share,
                "nprobe": OPTIONS.ivf_nprobe,
                **row,
                "recall_at_10": recall(found, among),
            }
        )
        print(json.dumps(filtered[-1]), flush=True)
    return summary, unfiltered, filtered


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("models/fashion-mnist"))
    parser.add_argument("--sizes", default="1000000,2000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--nprobe", default="8,16,32,64,128", help="IVF lists scanned, tried")
    parser.add_argument("--selectivities", default="0.5,0.05,0.02,0.005")
    parser.add_argument("--originals", type=int, default=60_000, help="train images augmented")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "results" / "cache")
    add_results_argument(parser)
    args = parser.parse_args()
    faiss.omp_set_num_threads(2)
    encoder = load_encoder(args.model)
    queries = embed(encoder, load_split("test")[0][: args.queries])
    sizes = numbers(args.sizes, int)
    biggest = corpus(encoder, max(sizes), args.originals, args.seed, args.cache)
    shares = numbers(args.selectivities, float)
    summaries, unfiltered, filtered = [], [], []
    for size in sizes:
        summary, u, f = measure_size(
            biggest[:size], queries, shares, numbers(args.nprobe, int), args.seed
        )
        summaries.append(summary)
        unfiltered += u
        filtered += f
    print("\n" + table(summaries, [(key, key) for key in summaries[0]]))
    print("\n" + table(unfiltered, [(key, key) for key in unfiltered[0]]))
    print("\n" + table(filtered, [(key, key) for key in filtered[0]]))
    write(
        args.results,
        "compressed",
        {
            "corpus": "Fashion-MNIST train + augmented copies, embedded (bench/search.py)",
            "model_version": encoder.info.version,
            "queries": len(queries),
            "settings": {
                "ivf_nprobe": OPTIONS.ivf_nprobe,
                "brute_force_max_matches": OPTIONS.brute_force_max_matches,
            },
            "sizes": summaries,
            "unfiltered": unfiltered,
            "filtered": filtered,
        },
    )


if __name__ == "__main__":
    main()
