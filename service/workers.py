"""Worker processes: `python -m service --workers N` serves one port from N processes.

Each worker is a whole service: its own event loop, ONNX Runtime session, micro-batcher and
index view, all over one shared truth (the SQLite file in DATA_DIR, or PostgreSQL). uvicorn's
process manager binds the port once and every worker accepts from that socket; the manager
replaces a worker that dies and stops them all on SIGTERM. (Chosen over SO_REUSEPORT, which
uvicorn's manager does not offer per worker, and over gunicorn, one more dependency doing the
same; bench/serve.py measures how evenly the kernel spreads connections.)

The parent splits the cores between the workers' inference threads, and points
prometheus_client at one folder so that /metrics on any worker adds up all of them.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from fastapi import FastAPI

from service.config import Settings
from service.metrics import MULTIPROCESS_DIR


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


def resolve_workers(value: int | str) -> int:
    return usable_cores() if value == "auto" else int(value)


def run_workers(settings: Settings, *, host: str, port: int, workers: int) -> None:
    """Serve with `workers` processes until SIGTERM or SIGINT."""
    import uvicorn

    metrics_dir = tempfile.mkdtemp(prefix="lookalike-metrics-")
    os.environ[MULTIPROCESS_DIR] = metrics_dir
    if not settings.inference_threads:  # workers × threads ≈ cores
        threads = max(1, usable_cores() // workers)
        os.environ["LOOKALIKE_INFERENCE_THREADS"] = str(threads)
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
