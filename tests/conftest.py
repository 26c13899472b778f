"""Shared fixtures: a small random-init artifact exported by the real export code, images made
with Pillow, and an app wired to a temporary data dir."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.config import Settings
from tests.postgres import Postgres
from tests.support import API_KEY, Server
from training.augment import AugmentConfig
from training.encoder import ContrastiveModel, EncoderConfig
from training.export import write_model_files
from training.train import TrainConfig


def export_random_artifact(out: Path, *, seed: int = 0) -> Path:
    """A random-init encoder written out exactly as training writes a real one."""
    torch.manual_seed(seed)
    cfg = EncoderConfig(widths=(8, 16, 32), depths=(1, 1, 1), whiten_dim=0)
    model = ContrastiveModel(cfg).eval()
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "encoder": cfg.to_dict(),
        "train": dataclasses.asdict(TrainConfig(command="(random init for tests)")),
        "augment": AugmentConfig().to_dict(),
        "input": {
            "channels": 1,
            "height": 28,
            "width": 28,
            "colour_mode": "L",
            "resize": "stretch",
        },
        "data": {"source": "none", "images": 0},
        "epoch": 0,
        "step": 0,
        "history": [],
        "wall_time_s": 0.0,
        "device": "cpu",
    }
    write_model_files(out, model, meta)
    return out


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_random_artifact(tmp_path_factory.mktemp("artifact") / "tiny")


def png_bytes(seed: int, size: tuple[int, int] = (28, 28), mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_settings(artifact: Path, data_dir: Path, **overrides: object) -> Settings:
    return Settings(model_dir=artifact, data_dir=data_dir, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def client(artifact: Path, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(make_settings(artifact, tmp_path / "data", api_key=API_KEY))
    with TestClient(app, headers=AUTH) as test_client:  # NO_KEY takes it off a request
        wait_ready(test_client)
        yield test_client


def wait_ready(client: TestClient, timeout_s: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError("service never became ready")
        time.sleep(0.02)


AUTH = {"Authorization": f"Bearer {API_KEY}"}
NO_KEY = {"Authorization": ""}  # a request without a key, from a client that has one


@pytest.fixture(scope="module")
def module_server(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server (with the API key) for a whole test module."""
    running = Server(artifact, tmp_path_factory.mktemp("server") / "data")
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Postgres:
    """One real PostgreSQL server for the session; tests take fresh databases on it."""
    return Postgres(tmp_path_factory.mktemp("postgres") / "pgdata")


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def store_settings(request: pytest.FixtureRequest) -> dict[str, object]:
    """Settings for each backend: the embedded SQLite, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return {}
    return {"database_url": request.getfixturevalue("postgres").new_database()}
