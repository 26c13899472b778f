"""Shared fixtures: a small random-init artifact exported by the real export code, an app wired
to a temporary data dir, a real server per module and a real PostgreSQL per session (the helpers
behind them live in testkit/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from testkit.app import make_settings, wait_ready
from testkit.artifacts import export_random_artifact
from testkit.postgres import Postgres
from testkit.server import API_KEY, AUTH, Server


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_random_artifact(tmp_path_factory.mktemp("artifact") / "tiny")


@pytest.fixture
def client(artifact: Path, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(make_settings(artifact, tmp_path / "data", api_key=API_KEY))
    with TestClient(app, headers=AUTH) as test_client:  # NO_KEY takes it off a request
        wait_ready(test_client)
        yield test_client


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
