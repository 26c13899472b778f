"""How many workers `auto` starts, and how many threads each one's searches use."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service import workers
from service.workers import available_memory, resolve_workers

GB = 2**30


def machine(monkeypatch: pytest.MonkeyPatch, *, cores: int, memory: int) -> None:
    monkeypatch.setattr(workers, "usable_cores", lambda: cores)
    monkeypatch.setattr(workers, "available_memory", lambda: memory)


def test_a_number_of_workers_is_taken_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, cores=2, memory=1 * GB)
    assert resolve_workers(6, images=10_000_000, kind="hnsw") == 6


def test_auto_starts_one_worker_per_core_when_memory_holds_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    machine(monkeypatch, cores=16, memory=64 * GB)
    assert resolve_workers("auto", images=100_000, kind="hnsw") == 16


def test_auto_starts_no_more_workers_than_half_the_memory_holds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's case: 16 cores and 2M images."""
    machine(monkeypatch, cores=16, memory=16 * GB)
    with caplog.at_level(logging.INFO, logger="service"):
        # Half of 16 GB, less 1.4 kB × 2M mapped once (2.8 GB), over 350 MB + 0.4 kB × 2M
        # (1.15 GB) a worker: four (before generations, at 3.5 kB a worker each: none fit).
        assert resolve_workers("auto", images=2_000_000, kind="hnsw") == 4
    assert "fewer workers than cores" in caplog.text
    assert resolve_workers("auto", images=1_000_000, kind="hnsw") == 9  # (8.6 - 1.4) / 0.77 GB
    assert resolve_workers("auto", images=100_000, kind="hnsw") == 16
    machine(monkeypatch, cores=4, memory=256 * 2**20)
    assert resolve_workers("auto", images=0, kind="hnsw") == 1  # never none


def test_auto_counts_the_shared_memory_of_the_kind_the_gallery_calls_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10M images: the `ivf` part keeps 0.4 kB an image in memory, HNSW's would take 1.4."""
    machine(monkeypatch, cores=16, memory=64 * GB)
    # Half of 64 GB, less 0.4 kB × 10M (4 GB), over 350 MB + 0.4 kB × 10M (4.37 GB) a worker.
    assert resolve_workers("auto", images=10_000_000, kind="ivf") == 6
    assert resolve_workers("auto", images=10_000_000, kind="hnsw") == 4  # less 14 GB


def test_the_available_memory_is_read_from_this_machine() -> None:
    total = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    assert 0 < available_memory() <= total


SEARCH_THREADS = """
import sys, threading
from service.__main__ import _encoder, _settings, preflight
from service.workers import share_cores

settings = _settings(search_threads=1)
preflight(settings, _encoder(settings))  # what `serve` runs before it shares the cores
assert "faiss" not in sys.modules, "FAISS loaded before its threads were set"
share_cores(settings, workers=2)
import faiss

seen = []
search = threading.Thread(target=lambda: seen.append(faiss.omp_get_max_threads()))
search.start()
search.join()
print(seen[0])
"""


def test_searches_use_the_threads_they_are_given(artifact: Path, tmp_path: Path) -> None:
    """Set in the environment before FAISS loads, the limit holds in every thread that searches
    (omp_set_num_threads would bind only the thread that calls it)."""
    env = {
        **os.environ,
        "LOOKALIKE_MODEL_DIR": str(artifact),
        "LOOKALIKE_DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run(
        [sys.executable, "-c", SEARCH_THREADS], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "1"
