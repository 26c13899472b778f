"""The in-process app (FastAPI's TestClient): settings over a temporary data dir, and waiting
for /readyz."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from service.config import Settings


def make_settings(artifact: Path, data_dir: Path, **overrides: object) -> Settings:
    return Settings(model_dir=artifact, data_dir=data_dir, **overrides)  # type: ignore[arg-type]


def wait_ready(client: TestClient, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError("service never became ready")
        time.sleep(0.02)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def generation_seq(client: TestClient) -> int:
    """The log position of the index generation the answering worker maps."""
    return int(client.get("/readyz").json()["index_generation"].split("-")[0])
