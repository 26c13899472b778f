"""The in-process app (FastAPI's TestClient): settings over a temporary data dir, and waiting
for /readyz."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.config import Settings


def make_settings(artifact: Path, data_dir: Path, **overrides: object) -> Settings:
    return Settings(model_dir=artifact, data_dir=data_dir, **overrides)  # type: ignore[arg-type]


def wait_ready(client: TestClient, timeout_s: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError("service never became ready")
        time.sleep(0.02)
