"""Zero-downtime model upgrades (issue 21), end to end: a real `python -m service` with two
workers on SQLite, and `python -m service model …` as a user runs it. The store keeps both
models; their vectors build in the background; one log entry switches every worker, and one
switches back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.store import open_store
from testkit.artifacts import export_random_artifact
from testkit.images import png_bytes
from testkit.server import AUTH, Server

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "fashion-mnist"
IMAGES = 120
SWITCH_S = 2.0


@pytest.fixture
def other(tmp_path: Path) -> Path:
    return export_random_artifact(tmp_path / "other", seed=7)


@pytest.fixture
def server(artifact: Path, tmp_path: Path) -> Iterator[Server]:
    running = Server(artifact, tmp_path / "data", LOOKALIKE_WORKERS="2")
    running.start(timeout_s=120)
    upload(running, range(IMAGES))
    yield running
    running.stop()


def upload(server: Server, seeds: range) -> None:
    for start in range(seeds.start, seeds.stop, 60):
        chunk = range(start, min(start + 60, seeds.stop))
        files = [("files", (f"{i}.png", png_bytes(i), "image/png")) for i in chunk]
        answer = httpx.post(
            server.url + "/images",
            files=files,
            data={"ids": [f"u{i}" for i in chunk]},
            headers=AUTH,
            timeout=60,
        )
        assert answer.status_code == 201, answer.text


def version_of(artifact: Path) -> str:
    import json

    return json.loads((artifact / "model.json").read_text())["version"]


def models_answering(server: Server) -> dict[int, str]:
    """Each worker's serving model, from /readyz on fresh connections (both get asked)."""
    seen: dict[int, str] = {}
    for _ in range(12):
        ready = httpx.get(server.url + "/readyz", headers={"Connection": "close"}).json()
        seen[ready["worker"]] = ready["model"]
    return seen


def wait_for_model(server: Server, version: str) -> float:
    """Seconds until every worker answers with `version`."""
    started = time.monotonic()
    while time.monotonic() - started < 30:
        seen = models_answering(server)
        if len(seen) == 2 and set(seen.values()) == {version}:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"workers still answer {models_answering(server)}")


def wait_for_vectors(server: Server, version: str, timeout_s: float = 120) -> None:
    settings = Settings(data_dir=Path(server.env["LOOKALIKE_DATA_DIR"]))  # type: ignore[call-arg]
    store = open_store(settings)
    try:
        deadline = time.monotonic() + timeout_s
        while store.count_missing(version):
            assert time.monotonic() < deadline, "the vectors did not build"
            time.sleep(0.2)
    finally:
        store.close()


def top_hit(server: Server, seed: int) -> tuple[str, str]:
    found = httpx.post(
        server.url + "/nearest",
        files={"file": ("q.png", png_bytes(seed), "image/png")},
        data={"k": "1"},
        headers={"Connection": "close"},
    ).json()
    return found["model"], found["results"][0]["id"]


def test_a_kept_model_is_activated_and_rolled_back_on_every_worker(
    server: Server, artifact: Path, other: Path
) -> None:
    old, new = version_of(artifact), version_of(other)
    assert "kept other" in server.run_command("model", "add", str(other), "--wait")  # built
    listing = server.run_command("model", "list")
    assert f"{IMAGES} / {IMAGES}" in listing.splitlines()[2] and "serving" in listing
    upload(server, range(IMAGES, IMAGES + 10))  # both models' vectors, while the old serves
    assert top_hit(server, IMAGES + 3) == (old, f"u{IMAGES + 3}")

    server.run_command("model", "activate", new[:12], "--force")
    assert wait_for_model(server, new) < SWITCH_S
    for seed in (5, IMAGES + 3):
        assert top_hit(server, seed) == (new, f"u{seed}")
    upload(server, range(IMAGES + 10, IMAGES + 20))  # made while the new model serves
    embedded = httpx.post(
        server.url + "/embed", files={"files": ("q.png", png_bytes(1), "image/png")}
    ).json()
    assert embedded["model"] == new and embedded["dim"] == 128

    server.run_command("model", "rollback")
    assert wait_for_model(server, old) < SWITCH_S
    for seed in (5, IMAGES + 3, IMAGES + 15):
        assert top_hit(server, seed) == (old, f"u{seed}")

    with pytest.raises(RuntimeError, match="serves: activate another model first"):
        server.run_command("model", "remove", old[:12])
    assert "removed" in server.run_command("model", "remove", new[:12])
    assert new[:12] not in server.run_command("model", "list")
    upload(server, range(IMAGES + 20, IMAGES + 21))  # only the serving model is kept now
    assert top_hit(server, IMAGES + 20) == (old, f"u{IMAGES + 20}")


def test_a_kill_9_while_vectors_build_resumes_and_doubles_nothing(
    artifact: Path, tmp_path: Path
) -> None:
    server = Server(artifact, tmp_path / "data")
    server.start(timeout_s=120)
    upload(server, range(400))
    server.run_command("model", "add", str(SHIPPED))  # the slower model: several batches
    new = version_of(SHIPPED)
    deadline = time.monotonic() + 60
    while '"done": 64' not in server.log_tail(100_000):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.05)
    server.kill()
    store = open_store(Settings(data_dir=tmp_path / "data"))  # type: ignore[call-arg]
    try:
        left = store.count_missing(new)
        assert 0 < left < 400  # some were built, some were not
        server.start(timeout_s=120)
        wait_for_vectors(server, new)
        rows = [
            image_id
            for batch in store.rows("default", max_seq=store.last_seq(), model=new)
            for image_id in batch.ids
        ]
        assert len(rows) == len(set(rows)) == 400
    finally:
        store.close()
        server.stop()


def test_a_model_that_finds_fewer_of_your_images_needs_force(
    artifact: Path, tmp_path: Path
) -> None:
    from service.fashion_mnist import load_split
    from service.imaging import encode_png

    server = Server(SHIPPED, tmp_path / "data", LOOKALIKE_WORKERS="1")
    server.start(timeout_s=120)
    try:
        images = load_split("test")[0][:300]
        for start in (0, 150):  # at most 256 images a request
            files = [
                ("files", (f"{i}.png", encode_png(images[i]), "image/png"))
                for i in range(start, start + 150)
            ]
            answer = httpx.post(server.url + "/images", files=files, headers=AUTH, timeout=120)
            answer.raise_for_status()
        server.run_command("model", "add", str(artifact), "--wait")  # random init: worse
        random_init = version_of(artifact)[:12]
        with pytest.raises(RuntimeError, match="finds fewer of your images"):
            server.run_command("model", "activate", random_init, "--sample", "300")
        status = server.run_command("model", "status", "--sample", "300")
        assert "fewer originals than the serving one" in status
        assert models_answering(server) and set(models_answering(server).values()) == {
            version_of(SHIPPED)
        }
    finally:
        server.stop()
