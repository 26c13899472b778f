"""The compressed kind (`ivf`) on a realistic corpus: build time, memory, recall, latency.

    python bench/compressed.py [--sizes 1000000,2000000] [--nprobe 8,16,32,64,128]
        [--selectivities 0.5,0.05,0.02,0.005]

Corpus and queries: bench/search.py's (embeddings of Fashion-MNIST train images and of
augmented copies of them, cached; queries are test images the corpus never holds), with the same
{"bucket": b} metadata for range filters. Each size is written as a generation
(`Generations.write`, as the service's compaction writes one: ids, metadata, filters, the exact
vectors and the IVF index, each file checksummed, the exact vectors then dropped from the page
cache), then opened and searched in a fresh process of its own, the way a worker maps it, one
query at a time with k=10 on 2 FAISS threads:
- unfiltered, at each `--nprobe`: p50/p99 ms and recall@10 against exact search (numpy);
- filtered at each selectivity, at the service's nprobe, as /nearest runs it (the plan the
  service picks): p50/p99 and recall@10 against the exact top 10 among the matches;
- the selector plan forced at each selectivity, scanning each `--selector-nprobe` lists, and
  brute force forced (up to 200,000 matches), on `--sweep-queries` queries: how many lists a
  filtered search needs as fewer images match, and what each plan costs (search_plan.py);
- memory: the process's resident set (`/proc/self/smaps_rollup`: Rss, of it Anonymous) before
  the part is opened and after every search above; mapped pages count there once they are read.
Writes RESULTS/compressed.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np
from report import add_results_argument, scratch, table, write
from search import (
    BUCKETS,
    K,
    add_corpus_arguments,
    exact,
    load_corpus,
    measure,
    numbers,
    recall,
)

from service.filters import parse_filter
from service.generation import Generations, PartSource
from service.index import ivf_lists
from service.index_options import IndexOptions
from service.mapped_index import MappedIndex
from service.store.base import RowBatch

OPTIONS = IndexOptions(kind="ivf")  # the service's defaults otherwise
CHUNK = 100_000
BRUTE_FORCE_SWEPT = 200_000  # brute force is measured up to this many matches


def memory_kb() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Rss", "Anonymous"):
            fields[name.lower()] = int(value.split()[0])
    return fields


def write_corpus_part(
    vectors: np.ndarray, buckets: np.ndarray, data_dir: Path
) -> tuple[Path, float]:
    """A generation of these rows, as the service's compaction writes one; its part's folder
    and the seconds taken."""

    def rows() -> Iterator[RowBatch]:
        for start in range(0, len(vectors), CHUNK):
            labels = np.arange(start, min(start + CHUNK, len(vectors)), dtype=np.int64)
            yield RowBatch(
                labels,
                vectors[labels],
                [str(n) for n in labels.tolist()],
                [f'{{"bucket":{b}}}' for b in buckets[labels].tolist()],
            )

    generations = Generations(data_dir, vectors.shape[1], OPTIONS, "bench")
    start = time.perf_counter()
    with generations.writing(wait=True):
        name = generations.write(len(vectors), {"default": PartSource(len(vectors), rows(), {})})
    return generations.root / name / "c0", time.perf_counter() - start


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
        filtered.append({"cut": cut, "plan": part.plan(matches, K), **latency, "found": found})
    after, sweep = memory_kb(), job["sweep_queries"]
    swept = []
    for cut in job["cuts"]:
        for nprobe in job["selector_nprobe"]:
            found_by = selector_search(part, cut, nprobe, queries[:sweep])
            swept.append({"cut": cut, "plan": "selector", "nprobe": nprobe, **found_by})
        where = parse_filter({"bucket": {"$lt": cut}})
        if np.count_nonzero(part.matching(where)) <= BRUTE_FORCE_SWEPT:
            part.tune(brute_force_max_matches=BRUTE_FORCE_SWEPT)
            found, latency = measure(lambda q, w=where: part.search(q, K, w)[0], queries[:sweep])
            part.tune(brute_force_max_matches=OPTIONS.brute_force_max_matches)
            swept.append({"cut": cut, "plan": "brute force", **latency, "found": found})
    return {
        "before": before,
        "opened": opened,
        "after": after,
        "unfiltered": unfiltered,
        "filtered": filtered,
        "sweep": swept,
    }


def selector_search(part: MappedIndex, cut: int, nprobe: int, queries: np.ndarray) -> dict:
    """FAISS's IVF search with an ID selector of the matches, scanning `nprobe` lists: how many
    a filtered search needs as fewer images match (ids are positions, which are the corpus's)."""
    mask = part.matching(parse_filter({"bucket": {"$lt": cut}}))
    bitmap = np.packbits(mask, bitorder="little")
    params = faiss.SearchParametersIVF()
    params.sel = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
    params.nprobe = nprobe
    index = part._index  # what the service's selector plan searches

    def search(q: np.ndarray) -> list[SimpleNamespace]:
        positions = index.search(q, K, params=params)[1][0]
        return [SimpleNamespace(id=str(p)) for p in positions.tolist() if p >= 0]

    found, latency = measure(search, queries)
    return {**latency, "found": found}


def measure_size(vectors: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> dict:
    """One size: its summary row and its rows of each table."""
    size = len(vectors)
    shares = numbers(args.selectivities, float)
    buckets = np.random.default_rng([args.seed, size]).permutation(size) * BUCKETS // size
    cuts = [round(share * BUCKETS) for share in shares]
    job = {
        "nprobe": numbers(args.nprobe, int),
        "cuts": cuts,
        "selector_nprobe": numbers(args.selector_nprobe, int),
        "sweep_queries": args.sweep_queries,
    }
    with scratch() as tmp:
        print(f"writing the ivf part of {size:,} vectors ({ivf_lists(size)} lists)", flush=True)
        folder, build_s = write_corpus_part(vectors, buckets, Path(tmp))
        disk = {p.name: p.stat().st_size for p in folder.rglob("*") if p.is_file()}
        print(f"written in {build_s:.0f} s; searching it in a fresh process", flush=True)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            got = pool.apply(search_part, (folder, queries, job))
    truth = exact(vectors, queries, np.arange(size))
    among = {cut: exact(vectors, queries, np.flatnonzero(buckets < cut)) for cut in cuts}
    share_of = dict(zip(cuts, shares, strict=True))
    rss_kb = got["after"]["rss"] - got["before"]["rss"]
    summary = {
        "vectors": size,
        "lists": ivf_lists(size),
        "build_s": round(build_s, 3),
        "index_mb": round(disk["index.faiss"] / 2**20, 1),
        "files_mb": round(sum(disk.values()) / 2**20, 1),
        "rss_mb_before": round(got["before"]["rss"] / 1024, 1),
        "rss_mb_opened": round(got["opened"]["rss"] / 1024, 1),
        "rss_mb_after": round(got["after"]["rss"] / 1024, 1),
        "anonymous_mb_after": round(got["after"]["anonymous"] / 1024, 1),
        "resident_b_per_image": round(rss_kb * 1024 / size),
        "process_b_per_image": round(got["after"]["rss"] * 1024 / size),
    }
    print(json.dumps(summary), flush=True)
    tables: dict[str, list[dict]] = {"unfiltered": [], "filtered": [], "selector": []}
    for row in got["unfiltered"]:
        found = row.pop("found")
        tables["unfiltered"].append({"vectors": size, **row, "recall_at_10": recall(found, truth)})
    for table_name, rows in (("filtered", got["filtered"]), ("selector", got["sweep"])):
        for row in rows:
            cut, found = row.pop("cut"), row.pop("found")
            tables[table_name].append(
                {
                    "vectors": size,
                    "selectivity": share_of[cut],
                    "matches": int(np.count_nonzero(buckets < cut)),
                    **row,
                    "recall_at_10": recall(found, among[cut][: len(found)]),
                }
            )
    for rows in tables.values():
        for row in rows:
            print(json.dumps(row), flush=True)
    return {"sizes": [summary], **tables}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_corpus_arguments(parser)
    parser.add_argument("--sizes", default="1000000,2000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--nprobe", default="8,16,32,64,128", help="IVF lists scanned, tried")
    parser.add_argument("--selectivities", default="0.5,0.05,0.02,0.005")
    parser.add_argument(
        "--selector-nprobe", default="32,64,128,256,512", help="lists a selector search scans"
    )
    parser.add_argument("--sweep-queries", type=int, default=200, help="queries per selector row")
    add_results_argument(parser)
    args = parser.parse_args()
    encoder, queries, sizes, biggest = load_corpus(args)
    results: dict[str, list[dict]] = {"sizes": [], "unfiltered": [], "filtered": [], "selector": []}
    for size in sizes:
        for name, rows in measure_size(biggest[:size], queries, args).items():
            results[name] += rows
    for rows in results.values():
        print("\n" + table(rows, [(key, key) for key in rows[0]]))
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
            **results,
        },
    )


if __name__ == "__main__":
    main()
