"""What writing a generation's part costs the process that writes it (a compaction's child, or a
worker's first start): peak memory and seconds, by rows.

    python bench/part_writer.py [--rows 1000000]

Writes a flat part (`mapped_index.write_part`, 8-d zero vectors: the vectors are not what is
measured here) of `--rows` rows with three metadata fields, {"label": "i % 10", "n": i,
"tags": ["a", "b{i % 7}"]}, into a folder under bench/results, and reports the growth of the
process's peak resident set (ru_maxrss) over the write. Run it from another checkout to measure
that code. Writes RESULTS/part_writer.json.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
from report import add_results_argument, scratch, write

from service.mapped_index import write_part
from service.store.base import RowBatch

CHUNK = 20_000


def rows(count: int) -> Iterator[RowBatch]:
    for start in range(0, count, CHUNK):
        labels = np.arange(start, min(start + CHUNK, count), dtype=np.int64)
        yield RowBatch(
            labels,
            np.zeros((len(labels), 8), np.float32),
            [f"img{i}" for i in labels.tolist()],
            [f'{{"label":"{i % 10}","n":{i},"tags":["a","b{i % 7}"]}}' for i in labels.tolist()],
        )


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    add_results_argument(parser)
    args = parser.parse_args()
    before = peak_mb()
    with scratch() as tmp:
        start = time.perf_counter()
        write_part(Path(tmp), faiss.IndexFlatIP(8), rows(args.rows), {})
        seconds = time.perf_counter() - start
    result = {"rows": args.rows, "seconds": round(seconds, 1), "peak_mb": round(peak_mb() - before)}
    print(result)
    write(args.results, "part_writer", result)


if __name__ == "__main__":
    main()
