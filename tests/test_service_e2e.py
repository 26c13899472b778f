"""End to end against a real uvicorn in a subprocess: restart, kill -9, concurrency."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from testkit.images import png_bytes
from testkit.server import API_KEY, AUTH, Server


@pytest.fixture
def server(artifact: Path, tmp_path: Path, store_settings: dict) -> Iterator[Server]:
    """The real service on each backend (SQLite, PostgreSQL), with its default workers."""
    url = store_settings.get("database_url")
    env = {"LOOKALIKE_DATABASE_URL": str(url)} if url else {}
    running = Server(artifact, tmp_path / "data", **env)
    running.start()
    yield running
    running.stop()


def _upload(client: httpx.Client, image_id: str, seed: int) -> httpx.Response:
    return client.post(
        "/images",
        headers=AUTH,
        data={"ids": image_id},
        files=[("files", (f"{image_id}.png", png_bytes(seed)))],
    )


def _assert_intact(client: httpx.Client, acknowledged: dict[str, int]) -> None:
    ready = client.get("/readyz").json()
    assert ready["indexed"] == ready["images"] >= len(acknowledged)
    for image_id, seed in acknowledged.items():
        assert client.get(f"/images/{image_id}").status_code == 200, image_id
        top = client.post(
            "/nearest", files=[("file", ("q.png", png_bytes(seed)))], data={"k": "1"}
        ).json()["results"][0]
        assert top["id"] == image_id and top["score"] == pytest.approx(1.0, abs=1e-5)


def test_round_trip_survives_a_graceful_restart(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        acknowledged = {}
        for i in range(8):
            assert _upload(client, f"photo-{i}", seed=100 + i).status_code == 201
            acknowledged[f"photo-{i}"] = 100 + i
        assert client.delete("/images/photo-3", headers=AUTH).status_code == 204
        del acknowledged["photo-3"]
    server.stop()
    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        _assert_intact(client, acknowledged)
        assert client.get("/images/photo-3").status_code == 404
        assert client.get("/readyz").json()["images"] == 7


@pytest.mark.slow
def test_kill_9_during_uploads_loses_no_acknowledged_image(server: Server) -> None:
    acknowledged: dict[str, int] = {}
    seed = 1000
    for _round in range(3):
        stop = threading.Event()

        def uploader(worker: int, first_seed: int, stop: threading.Event) -> None:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                n = 0
                while not stop.is_set():
                    image_id, image_seed = f"w{worker}-{first_seed + n}", first_seed + n
                    try:
                        if _upload(client, image_id, image_seed).status_code == 201:
                            acknowledged[image_id] = image_seed
                    except httpx.TransportError:
                        return
                    n += 1

        threads = [
            threading.Thread(target=uploader, args=(w, seed + w * 10_000, stop)) for w in range(3)
        ]
        for t in threads:
            t.start()
        time.sleep(1.5)
        server.kill()
        stop.set()
        for t in threads:
            t.join()
        seed += 100_000
        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            _assert_intact(client, acknowledged)
    assert len(acknowledged) > 10


def test_concurrent_uploads_and_searches_give_no_errors(server: Server) -> None:
    def work(i: int) -> list[int]:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            statuses = [_upload(client, f"c{i}", seed=5000 + i).status_code]
            query = [("file", ("q.png", png_bytes(5000 + i)))]
            statuses.append(client.post("/nearest", files=query, data={"k": "5"}).status_code)
            statuses.append(
                client.post("/embed", files=[("files", ("e.png", png_bytes(i)))]).status_code
            )
            return statuses

    with ThreadPoolExecutor(16) as pool:
        results = [s for statuses in pool.map(work, range(48)) for s in statuses]
    assert set(results) == {200, 201}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        ready = client.get("/readyz").json()
        assert ready["images"] == ready["indexed"] == 48


def test_bulk_import_loads_a_folder_with_sidecar_metadata_and_resumes(
    server: Server, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    (folder / "tops").mkdir(parents=True)
    for i in range(5):
        (folder / "tops" / f"t{i}.png").write_bytes(png_bytes(7000 + i))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "metadata.csv").write_text("file,label\ntops/t0.png,shirt\ntops/t1.png,blouse\n")
    command = [
        sys.executable,
        "-m",
        "service",
        "import",
        str(folder),
        "--url",
        server.url,
        "--api-key",
        API_KEY,
    ]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "imported 5, skipped 1" in first.stderr and "broken.png" in first.stderr
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/readyz").json()["images"] == 5
        record = client.get("/images/tops:t1.png").json()
        assert record["metadata"] == {"path": "tops/t1.png", "label": "blouse"}
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert "5 already imported, 1 to go" in again.stderr


def refusal(env: dict[str, str]) -> str:
    """`python -m service` refusing to start: a non-zero exit and one `error:` line (returned)."""
    done = subprocess.run(
        [sys.executable, "-m", "service", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]


def test_a_bad_artifact_or_setting_refuses_to_start_with_one_clear_line(
    artifact: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((artifact / "model.json").read_text())
    (broken / "encoder.onnx").write_bytes((artifact / "encoder.onnx").read_bytes()[:1000])
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    meta = json.loads((artifact / "model.json").read_text())
    (mismatched / "model.json").write_text(json.dumps({**meta, "embedding_dim": 999}))
    (mismatched / "encoder.onnx").write_bytes((artifact / "encoder.onnx").read_bytes())
    cases = [
        ("LOOKALIKE_MODEL_DIR", str(broken), "does not match model.json's version"),
        ("LOOKALIKE_MODEL_DIR", str(mismatched), "model.json says embedding_dim 999"),
        ("LOOKALIKE_MODEL_DIR", str(tmp_path / "nowhere"), "is not a model artifact"),
        ("LOOKALIKE_BATCH_SIZE", "zero", "LOOKALIKE_BATCH_SIZE"),
    ]
    for name, value, expected in cases:
        env = {
            **os.environ,
            "LOOKALIKE_MODEL_DIR": str(artifact),
            "LOOKALIKE_DATA_DIR": str(tmp_path / "d"),
            name: value,
        }
        assert expected in refusal(env)


def test_every_log_line_is_json_even_without_a_writable_home(
    artifact: Path, tmp_path: Path
) -> None:
    """As in the image: HOME is not writable, two workers, startup to shutdown."""
    server = Server(artifact, tmp_path / "data", HOME="/proc/no-home", LOOKALIKE_WORKERS="2")
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert _upload(client, "one", seed=1).status_code == 201
            assert (
                client.post("/embed", files=[("files", ("e.png", b"nonsense"))]).status_code == 422
            )
    finally:
        server.stop()
    lines = server.log_tail(10**7).splitlines()
    assert len(lines) > 10
    for line in lines:
        assert isinstance(json.loads(line), dict), line


def test_backup_writes_a_readable_copy_while_the_service_runs(
    artifact: Path, tmp_path: Path
) -> None:
    server = Server(artifact, tmp_path / "data")
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for n in range(5):
                assert _upload(client, f"b{n}", seed=300 + n).status_code == 201
        backup = tmp_path / "backup"
        done = subprocess.run(
            [sys.executable, "-m", "service", "backup", str(backup)],
            env={**server.env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "backed up 5 images" in done.stderr
    finally:
        server.stop()
    with sqlite3.connect(backup / "gallery.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 5
    restored = Server(artifact, backup)  # the copy is a complete data dir
    restored.start()
    try:
        with httpx.Client(base_url=restored.url, timeout=30) as client:
            assert client.get("/images/b3/content").content == png_bytes(303)
            top = client.post(
                "/nearest", files=[("file", ("q.png", png_bytes(302)))], data={"k": "1"}
            ).json()["results"][0]
            assert top["id"] == "b2"
    finally:
        restored.stop()


def test_a_store_from_before_kept_models_refuses_another_replica_model_until_reembedded(
    artifact: Path, tmp_path: Path, postgres
) -> None:
    from testkit.artifacts import export_random_artifact

    url = postgres.new_database()
    first = Server(artifact, tmp_path / "a", LOOKALIKE_DATABASE_URL=url)
    first.start()
    with httpx.Client(base_url=first.url, timeout=30) as client:
        assert _upload(client, "kept", seed=5).status_code == 201
    first.stop()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("DELETE FROM models")  # as a lookalike from before kept models left it
    other = export_random_artifact(tmp_path / "other", seed=3)
    env = {
        **first.env,
        "LOOKALIKE_MODEL_DIR": str(other),
        "LOOKALIKE_DATA_DIR": str(tmp_path / "b"),
    }
    assert "python -m service reembed" in refusal(env)
    upgraded = subprocess.run(
        [sys.executable, "-m", "service", "reembed"], env=env, capture_output=True, text=True
    )
    assert upgraded.returncode == 0, upgraded.stderr
    second = Server(other, tmp_path / "b", LOOKALIKE_DATABASE_URL=url)
    second.start()
    try:
        with httpx.Client(base_url=second.url, timeout=30) as client:
            top = client.post(
                "/nearest", files=[("file", ("q.png", png_bytes(5)))], data={"k": "1"}
            ).json()["results"][0]
            assert top["id"] == "kept" and top["score"] == pytest.approx(1.0, abs=1e-5)
    finally:
        second.stop()
    again = subprocess.run(  # the store keeps its model now: no more offline re-embedding
        [sys.executable, "-m", "service", "reembed"], env=env, capture_output=True, text=True
    )
    assert again.returncode == 1 and "this store keeps its models" in again.stderr
