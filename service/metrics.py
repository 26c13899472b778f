"""Prometheus instruments, one registry per app (so tests can run several apps).

With `--workers N`, the command sets PROMETHEUS_MULTIPROC_DIR before any worker starts:
prometheus_client then keeps every worker's values in files there, and `render` adds them up,
so /metrics on any worker reports the whole service. Gauges say how workers combine: queued
images add up, while every worker holds the same gallery, so sizes take the largest.
"""

from __future__ import annotations

import glob
import os
import re

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lookalike_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lookalike_request_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "lookalike_batch_images",
            "images per model call",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "lookalike_queue_images",
            "images waiting for the model",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.index_size = Gauge(
            "lookalike_index_vectors",
            "vectors in the search index",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.unreadable_rows = Gauge(
            "lookalike_unreadable_rows",
            "stored images left out of search: their metadata cannot be read (see the log)",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.auth_failures = Counter(
            "lookalike_auth_failures",
            "requests refused for a missing, unknown, revoked or expired key, or its scope",
            ["reason"],
            registry=self.registry,
        )
        self.store_size = Gauge(
            "lookalike_store_images",
            "images in the store",
            registry=self.registry,
            multiprocess_mode="livemax",
        )

        # (method, route template, status) → its request counter and latency histogram:
        # `labels()` looks a child up by its label values on every call, twice per request.
        self._request_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        series = self._request_series.get((method, route, status))
        if series is None:
            labels = (method, route, str(status))
            series = self.requests.labels(*labels), self.latency.labels(*labels)
            self._request_series[method, route, status] = series
        series[0].inc()
        series[1].observe(seconds)

    def render(self) -> bytes:
        folder = os.environ.get(MULTIPROCESS_DIR)
        if not folder:
            return generate_latest(self.registry)
        _forget_dead_workers(folder)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=folder)
        return generate_latest(merged)


def _forget_dead_workers(folder: str) -> None:
    """A killed worker never says goodbye: drop its live gauges (its counters stay counted)."""
    for path in glob.glob(os.path.join(folder, "gauge_live*_*.db")):
        match = re.search(r"_(\d+)\.db$", path)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
