"""What every benchmark records beside its numbers: the machine, the libraries and the date.

Scripts print a table and write `RESULTS/<name>.json` (default `bench/results/`), whose
`machine` block is what BENCHMARKS.md quotes. Importing this module also puts the repository
root on sys.path, so `python bench/x.py` can use `reliability` and `testkit`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))  # before site-packages, which may hold a stray `testkit`
RESULTS = ROOT / "bench" / "results"
LIBRARIES = (
    "torch",
    "torchvision",
    "lightly",
    "onnxruntime",
    "faiss-cpu",
    "fastapi",
    "uvicorn",
    "numpy",
    "pillow",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "libraries": versions,
    }


def add_results_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="folder for the JSON (default bench/results)"
    )


def scratch() -> tempfile.TemporaryDirectory:
    """A temporary folder on disk, under bench/results/, for big index files: /tmp may be memory
    (tmpfs), whose pages a memory measurement would count."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=RESULTS)


def write(results: Path, name: str, data: dict) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    path.write_text(json.dumps({**data, "machine": machine()}, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain aligned table: columns are (key, header) pairs; missing keys print blank."""
    cells = [[header for _, header in columns]]
    for row in rows:
        cells.append([format_cell(row.get(key, "")) for key, _ in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True))
        for line in cells
    )


def format_cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
