"""Scale, end to end with real processes: `--workers 2` over one SQLite data dir, and two
replicas over one real PostgreSQL server (each with its own data dir)."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from testkit.images import png_bytes
from testkit.postgres import Postgres
from testkit.server import AUTH, Server


def upload(url: str, image_id: str, seed: int, **kwargs: object) -> httpx.Response:
    """One upload on a fresh connection (so the kernel may hand it to any worker)."""
    return httpx.post(
        url + "/images",
        headers=AUTH,
        data={"ids": image_id},
        files=[("files", (f"{image_id}.png", png_bytes(seed)))],
        timeout=30,
        **kwargs,  # type: ignore[arg-type]
    )


def top_hit(url: str, seed: int) -> dict:
    response = httpx.post(
        url + "/nearest", files=[("file", ("q.png", png_bytes(seed)))], data={"k": "1"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def counter(metrics: str, route: str, method: str, status: int) -> float:
    pattern = (
        rf'lookalike_requests_total{{method="{method}",route="{route}",status="{status}"}} (\S+)'
    )
    match = re.search(pattern, metrics)
    return float(match.group(1)) if match else 0.0


@pytest.fixture
def two_workers(artifact: Path, tmp_path: Path) -> Iterator[Server]:
    running = Server(artifact, tmp_path / "data", LOOKALIKE_WORKERS="2")
    running.start()
    yield running
    running.stop()


def test_two_workers_share_one_port_and_each_write_is_read_by_the_next_request(
    two_workers: Server,
) -> None:
    url = two_workers.url
    pids = two_workers.worker_pids()
    assert len(pids) == 2
    for n in range(60):
        assert upload(url, f"img{n}", seed=n).status_code == 201
        top = top_hit(url, n)
        assert top["id"] == f"img{n}" and top["score"] == pytest.approx(1.0, abs=1e-5)
    for n in range(0, 60, 3):
        assert httpx.delete(f"{url}/images/img{n}", headers=AUTH).status_code == 204
        gone = httpx.post(url + "/nearest", json={"id": f"img{n}", "k": 1})
        assert gone.status_code == 404
        assert top_hit(url, n)["id"] != f"img{n}"
    ready = httpx.get(url + "/readyz").json()
    assert ready["images"] == ready["indexed"] == 40
    metrics = httpx.get(url + "/metrics").text  # one worker answers for both
    assert counter(metrics, "/images", "POST", 201) == 60
    assert counter(metrics, "/nearest", "POST", 200) == 60 + 20
    assert counter(metrics, "/nearest", "POST", 404) == 20


@pytest.mark.slow
def test_kill_9_of_one_worker_during_uploads_loses_nothing_and_it_is_replaced(
    two_workers: Server,
) -> None:
    url = two_workers.url
    acknowledged: dict[str, int] = {}
    stop = threading.Event()

    def uploader(worker: int) -> None:
        seed = 10_000 * (worker + 1)
        while not stop.is_set():
            try:
                if upload(url, f"w{worker}-{seed}", seed).status_code == 201:
                    acknowledged[f"w{worker}-{seed}"] = seed
            except httpx.TransportError:
                pass  # its worker was killed mid-request: not acknowledged
            seed += 1

    before = two_workers.worker_pids()
    threads = [threading.Thread(target=uploader, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    time.sleep(2)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    assert len(acknowledged) > 20
    for image_id, seed in acknowledged.items():
        assert top_hit(url, seed)["id"] == image_id
    deadline = time.monotonic() + 60
    while len(after := two_workers.worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert victim not in after and len(after) == 2  # replaced, and serving
    ready = httpx.get(url + "/readyz").json()  # an upload may commit but lose its answer
    assert ready["images"] == ready["indexed"] >= len(acknowledged)


@pytest.fixture
def replicas(artifact: Path, tmp_path: Path, postgres: Postgres) -> Iterator[list[Server]]:
    url = postgres.new_database()
    servers = [
        Server(artifact, tmp_path / name, LOOKALIKE_DATABASE_URL=url, LOOKALIKE_WORKERS="1")
        for name in ("a", "b")
    ]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


def test_replicas_over_one_postgres_share_the_gallery(replicas: list[Server]) -> None:
    a, b = (s.url for s in replicas)
    for n in range(20):
        assert upload(a, f"r{n}", seed=n).status_code == 201
        assert top_hit(b, n)["id"] == f"r{n}"
    original = httpx.get(f"{a}/images/r7/content")
    assert original.content == httpx.get(f"{b}/images/r7/content").content == png_bytes(7)
    assert httpx.delete(f"{b}/images/r7", headers=AUTH).status_code == 204
    assert httpx.get(f"{a}/images/r7").status_code == 404
    assert top_hit(a, 7)["id"] != "r7"
    pages = [httpx.get(f"{url}/images", params={"limit": 100}).json()["items"] for url in (a, b)]
    assert pages[0] == pages[1] and len(pages[0]) == 19


def test_two_replicas_upserting_one_id_at_once_end_with_one_row_in_every_index(
    replicas: list[Server],
) -> None:
    def hammer(which: int) -> list[int]:
        return [
            upload(replicas[which].url, "same", seed=1000 * which + n).status_code
            for n in range(15)
        ]

    with ThreadPoolExecutor(2) as pool:
        statuses = [s for result in pool.map(hammer, range(2)) for s in result]
    assert set(statuses) == {201}
    final = httpx.get(f"{replicas[0].url}/images/same/content").content
    for server in replicas:
        ready = httpx.get(server.url + "/readyz").json()
        assert ready["images"] == ready["indexed"] == 1
        hits = httpx.post(
            server.url + "/nearest", files=[("file", ("q.png", final))], data={"k": "5"}
        ).json()["results"]
        assert [h["id"] for h in hits] == ["same"]
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_kill_9_of_a_replica_loses_nothing_and_it_catches_up_when_restarted(
    replicas: list[Server],
) -> None:
    a, b = replicas
    acknowledged: dict[str, int] = {}
    stop = threading.Event()

    def uploader(server: Server, worker: int) -> None:
        seed = 10_000 * (worker + 1)
        while not stop.is_set():
            try:
                if upload(server.url, f"k{worker}-{seed}", seed).status_code == 201:
                    acknowledged[f"k{worker}-{seed}"] = seed
            except httpx.TransportError:
                if server is a:
                    return  # a is gone
            seed += 1

    threads = [threading.Thread(target=uploader, args=(s, w)) for w, s in enumerate([a, a, b])]
    for t in threads:
        t.start()
    time.sleep(2)
    a.kill()
    time.sleep(2)  # b takes more while a is down
    stop.set()
    for t in threads:
        t.join()
    assert len(acknowledged) > 20
    a.start()
    for url in (a.url, b.url):
        for image_id, seed in acknowledged.items():
            assert top_hit(url, seed)["id"] == image_id
        ready = httpx.get(url + "/readyz").json()  # an upload may commit but lose its answer
        assert ready["images"] == ready["indexed"] >= len(acknowledged)


@pytest.mark.slow
def test_when_postgres_goes_away_writes_get_503_reads_go_on_and_all_recovers(
    replicas: list[Server], postgres: Postgres
) -> None:
    for n in range(5):
        assert upload(replicas[n % 2].url, f"d{n}", seed=n).status_code == 201
    for server in replicas:  # each has read since the last write: its index has all five
        assert top_hit(server.url, 4)["id"] == "d4"
    postgres.kill()
    try:
        for server in replicas:
            started = time.monotonic()
            refused = upload(server.url, "while-down", seed=99)
            assert refused.status_code == 503, refused.text
            assert time.monotonic() - started < 15
            assert refused.headers["Retry-After"]
            assert refused.json()["error"]["code"] == "store_unavailable"
            for n in range(5):
                assert top_hit(server.url, n)["id"] == f"d{n}"
            embedded = httpx.post(
                server.url + "/embed", files=[("files", ("e.png", png_bytes(3)))], timeout=30
            )
            assert embedded.status_code == 200
    finally:
        postgres.start()
    for server in replicas:
        deadline = time.monotonic() + 30
        while (status := upload(server.url, f"back-{server.port}", seed=7).status_code) != 201:
            assert status == 503 and time.monotonic() < deadline, status
            time.sleep(0.5)
    for server in replicas:
        ready = httpx.get(server.url + "/readyz").json()
        assert ready["images"] == ready["indexed"] == 7


def test_two_workers_re_embed_a_store_from_before_kept_models_once_and_both_serve_it(
    artifact: Path, tmp_path: Path
) -> None:
    from testkit.artifacts import export_random_artifact

    first = Server(artifact, tmp_path / "data", LOOKALIKE_WORKERS="1")
    first.start()
    for n in range(6):
        assert upload(first.url, f"m{n}", seed=n).status_code == 201
    first.stop()
    with sqlite3.connect(tmp_path / "data" / "gallery.sqlite3") as db:
        db.execute("DELETE FROM models")  # as a lookalike from before kept models left it
    other = export_random_artifact(tmp_path / "other", seed=11)
    second = Server(other, tmp_path / "data", LOOKALIKE_WORKERS="2")
    second.start()
    try:
        assert len(second.worker_pids()) == 2  # both ready, on the new model's vectors
        for _ in range(6):
            ready = httpx.get(second.url + "/readyz").json()
            assert ready["images"] == ready["indexed"] == 6
        for n in range(6):
            top = top_hit(second.url, n)
            assert top["id"] == f"m{n}" and top["score"] == pytest.approx(1.0, abs=1e-5)
        log = second.log_tail(10**7)
        assert log.count('"message": "model changed: re-embedding stored originals"') == 1
    finally:
        second.stop()


def test_collections_and_filters_work_across_two_workers_over_postgres(
    artifact: Path, tmp_path: Path, postgres: Postgres
) -> None:
    """Each request on a fresh connection, so either worker may answer it: every write made
    through one worker is seen, inside its own collection, by the next request to the other."""
    server = Server(
        artifact,
        tmp_path / "data",
        LOOKALIKE_DATABASE_URL=postgres.new_database(),
        LOOKALIKE_WORKERS="2",
    )
    server.start()
    try:
        url = server.url
        assert len(server.worker_pids()) == 2
        assert httpx.put(f"{url}/collections/shoes", headers=AUTH).status_code == 201
        for n in range(12):
            where = "/collections/shoes" if n % 2 else ""
            meta = json.dumps({"label": "boot" if n % 3 == 0 else "bag", "n": n})
            made = httpx.post(
                f"{url}{where}/images",
                headers=AUTH,
                data={"ids": f"img{n % 4}-{n}", "metadata": meta},
                files=[("files", ("x.png", png_bytes(n)))],
            )
            assert made.status_code == 201, made.text
        # The same id in both collections: two images.
        for where, seed in (("", 100), ("/collections/shoes", 101)):
            httpx.post(
                f"{url}{where}/images",
                headers=AUTH,
                data={"ids": "same", "metadata": '{"label": "boot", "n": 99}'},
                files=[("files", ("x.png", png_bytes(seed)))],
            )
        for where, seed in (("", 100), ("/collections/shoes", 101)):
            found = httpx.post(
                f"{url}{where}/nearest",
                files=[("file", ("q.png", png_bytes(seed)))],
                data={"k": "20", "filter": '{"label": "boot"}'},
            ).json()["results"]
            ids = [r["id"] for r in found]
            odd = where != ""
            expected = {f"img{n % 4}-{n}" for n in range(12) if n % 3 == 0 and n % 2 == odd}
            assert ids[0] == "same" and set(ids) == expected | {"same"}
            ranged = httpx.post(
                f"{url}{where}/nearest",
                json={"id": "same", "k": 20, "filter": {"n": {"$gte": 6, "$lt": 99}}},
            ).json()["results"]
            assert {r["metadata"]["n"] for r in ranged} == {n for n in range(6, 12) if n % 2 == odd}
        assert (
            httpx.post(
                f"{url}/nearest", json={"id": "same", "filter": {"n": {"$gt": "x"}}}
            ).status_code
            == 422
        )
        assert httpx.delete(f"{url}/collections/shoes", headers=AUTH).status_code == 204
        for _ in range(4):  # whichever worker answers has forgotten the collection
            gone = httpx.post(f"{url}/collections/shoes/nearest", json={"id": "same"})
            assert gone.status_code == 404
            assert [c["name"] for c in httpx.get(f"{url}/collections").json()["items"]] == [
                "default"
            ]
            assert httpx.get(f"{url}/images/same").status_code == 200
        ready = httpx.get(url + "/readyz").json()
        assert ready["images"] == ready["indexed"] == 7
    finally:
        server.stop()
