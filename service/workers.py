"""Worker processes: `python -m service --workers N` serves one port from N processes.

Each worker is a whole service: its own event loop, ONNX Runtime session, micro-batcher and
index view, all over one shared truth (the SQLite file in DATA_DIR, or PostgreSQL). uvicorn's
process manager binds the port once and every worker accepts from that socket; the manager
replaces a worker that dies and stops them all on SIGTERM. (Chosen over SO_REUSEPORT, which
uvicorn's manager does not offer per worker, and over gunicorn, one more dependency doing the
same; bench/serve.py measures how evenly the kernel spreads connections.)

`auto` starts one worker per core, but never more than half the available memory holds: the
index generation's files once (every worker maps them), and per worker its model, its own
changes since the generation and what it keeps per image. The parent splits the cores between
the workers' inference and search threads, and points prometheus_client at one folder so that
/metrics on any worker adds up all of them.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from fastapi import FastAPI

from service.config import Settings
from service.heap import limit_malloc_arenas
from service.index_options import IndexKind
from service.metrics import MULTIPROCESS_DIR

log = logging.getLogger("service")

# A worker's private memory before its index: measured 293 MB with models/icons after batches of
# 64 (145 MB with fashion-mnist), read from /proc/PID/smaps_rollup.
WORKER_BASE_BYTES = 350 * 2**20
# The generation's files, in memory once however many workers map them, by the index kind the
# gallery's size calls for: measured 1.14 kB per image for a flat 256-d index with two metadata
# fields at 100k; HNSW's graph (M 32) adds ~0.26; the `ivf` kind's part kept 0.32 kB per image
# resident at 2M (its exact vectors are read only for brute-force scoring; BENCHMARKS §7).
SHARED_BYTES_PER_IMAGE: dict[IndexKind, int] = {"flat": 1_200, "hnsw": 1_400, "ivf": 400}
# What each worker's memory grew by per image from 10k to 100k uploads with metadata, 2 workers
# (bench/worker_memory.py: 0.28 and 0.31 kB with generations due at 2 % of the size; 0.74 and
# 0.84 kB at a fixed 10,000 changes; 3.8 and 4.4 kB before generations; BENCHMARKS §6). It holds
# its changes since the generation (about 2 kB each) and what the allocator keeps of them.
PRIVATE_BYTES_PER_IMAGE = 400
# `auto` plans on half the available memory: the gallery grows after start, and the page cache
# and the database need the rest.
MEMORY_SHARE = 0.5


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup quota (containers)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def available_memory() -> int:
    """Bytes this process may still use: its cgroup's limit less its usage (containers), else
    the kernel's MemAvailable."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            return max(0, int(limit) - used)
    except (OSError, ValueError):
        pass
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("cannot tell the available memory: no MemAvailable in /proc/meminfo")


def resolve_workers(value: int | str, images: int, kind: IndexKind) -> int:
    """`auto`: one worker per usable core, but no more than MEMORY_SHARE of the available memory
    holds: SHARED_BYTES_PER_IMAGE of `kind` (the index kind of the gallery) × images once, and
    WORKER_BASE_BYTES + PRIVATE_BYTES_PER_IMAGE × images per worker; at least one."""
    if value != "auto":
        return int(value)
    cores, available = usable_cores(), available_memory()
    budget = available * MEMORY_SHARE - SHARED_BYTES_PER_IMAGE[kind] * images
    per_worker = WORKER_BASE_BYTES + PRIVATE_BYTES_PER_IMAGE * images
    workers = max(1, min(cores, int(budget // per_worker)))
    log.info(
        "workers: auto",
        extra={
            "workers": workers,
            "cores": cores,
            "available_mb": available // 2**20,
            "per_worker_mb": per_worker // 2**20,
            "images": images,
            "index_kind": kind,
        },
    )
    if workers < cores:
        log.warning(
            "fewer workers than cores: more would not fit in memory with this gallery "
            "(set LOOKALIKE_WORKERS to choose)",
            extra={"workers": workers, "cores": cores},
        )
    return workers


def share_cores(settings: Settings, workers: int) -> None:
    """Split the cores between the workers' inference and search threads (workers × threads =
    cores), unless the settings name a number. Call it before FAISS is imported: OpenMP reads
    OMP_NUM_THREADS once, when it loads, and `omp_set_num_threads` binds only the calling
    thread, not the threads that run searches. A search that wakes threads another worker needs
    waits a scheduler tick."""
    threads = str(max(1, usable_cores() // workers))
    if not settings.inference_threads:
        os.environ["LOOKALIKE_INFERENCE_THREADS"] = threads
    os.environ["OMP_NUM_THREADS"] = str(settings.search_threads or threads)


def run_workers(settings: Settings, *, host: str, port: int, workers: int) -> None:
    """Serve with `workers` processes until SIGTERM or SIGINT."""
    import uvicorn

    metrics_dir = tempfile.mkdtemp(prefix="lookalike-metrics-")
    os.environ[MULTIPROCESS_DIR] = metrics_dir
    if settings.seed_demo_gallery:
        os.environ["LOOKALIKE_SEED_DEMO_GALLERY"] = settings.seed_demo_gallery
    try:
        uvicorn.run(
            "service.workers:worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,
            timeout_graceful_shutdown=10,
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def worker_app() -> FastAPI:
    """The app one worker process serves (uvicorn calls this in each new process)."""
    from service.app import create_app
    from service.logs import configure_logging

    limit_malloc_arenas()
    settings = Settings()
    configure_logging(settings.log_level)
    _exit_with(os.getppid())
    return create_app(settings)


def _exit_with(parent: int) -> None:
    """A worker whose manager was killed (kill -9 leaves no time to stop it) shuts down
    instead of serving on as an orphan."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
