"""Memory per image of a service with several workers, the switch to a new index generation, and
start-up time on a full gallery.

    python bench/worker_memory.py [--images 100000] [--workers 2] [--churn 20000]

Starts `python -m service --workers N` (the shipped Fashion-MNIST model, a temporary data dir),
uploads `--warm-up` distinct 28×28 PNGs with metadata {"label": i % 10, "n": i} (256 a request,
4 requests at a time), so that every worker's model, batcher and threads have grown to their
working size, and reads each worker's memory from /proc/PID/smaps_rollup: anonymous (its own
heap), private (what no other process maps: anonymous, and file pages only it has touched) and
proportional (Pss: each shared page split among those mapping it). Then uploads the rest up to
`--images`, waits until every worker has caught up, and reads them again: the growth per image.
Checks every worker (each request on a fresh connection, so the kernel spreads them): sampled
uploads are their own top hit, deleted images never come back, and a filter's hits all
match, best first, the same from every worker. Then `--churn` more changes (half uploads, half
deletes; past COMPACT_AFTER_CHANGES) and every worker must map the same newest generation.
Finally the service is stopped and started again on that gallery and on an empty data dir: the
time to ready of each. Run it from another checkout to measure that code. Writes
RESULTS/worker_memory.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from report import ROOT, add_results_argument, write

from testkit.images import png_bytes
from testkit.server import AUTH, Server

BATCH = 256


def smaps(pid: int) -> dict[str, int]:
    """Anonymous, private (clean + dirty) and proportional bytes of one process."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":")
        fields[name] = int(value.split()[0]) * 1024
    private = fields["Private_Clean"] + fields["Private_Dirty"]
    return {"anonymous": fields["Anonymous"], "private": private, "pss": fields["Pss"]}


def memory(server: Server) -> dict[int, dict[str, int]]:
    return {pid: smaps(pid) for pid in sorted(server.worker_pids())}


def growth(before: dict, after: dict, images: int) -> dict[str, list[int]]:
    """Bytes per image, per worker, of each kind of memory."""
    pids = [pid for pid in after if pid in before]
    return {
        kind: [round((after[pid][kind] - before[pid][kind]) / images) for pid in pids]
        for kind in ("anonymous", "private", "pss")
    }


def generation_mb(data: Path) -> float | None:
    """The size of the newest index generation's files (what the workers map)."""
    try:
        folder = data / "generations" / (data / "generations" / "CURRENT").read_text()
    except FileNotFoundError:
        return None
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20, 1)


def upload(server: Server, first: int, count: int) -> None:
    def one(start: int) -> None:
        ids = range(start, min(start + BATCH, first + count))
        files = [("files", (f"{i}.png", png_bytes(i), "image/png")) for i in ids]
        data = {
            "ids": [f"img{i}" for i in ids],
            "metadata": [json.dumps({"label": i % 10, "n": i}) for i in ids],
        }
        response = httpx.post(
            server.url + "/images", files=files, data=data, headers=AUTH, timeout=120
        )
        response.raise_for_status()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(first, first + count, BATCH)))


def delete(server: Server, ids: list[int]) -> None:
    def one(i: int) -> None:
        response = httpx.delete(f"{server.url}/images/img{i}", headers=AUTH, timeout=60)
        assert response.status_code == 204, response.text

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, ids))


def caught_up(server: Server, timeout_s: float = 600) -> list[dict]:
    """Wait until every worker's index includes the store's newest change; their /readyz."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen: dict[int, dict] = {}
        for _ in range(40):
            ready = httpx.get(server.url + "/readyz", timeout=10).json()
            seen[ready["worker"]] = ready
        if all(r["index_seq"] == r["store_seq"] for r in seen.values()):
            return list(seen.values())
        time.sleep(0.5)
    raise TimeoutError("the workers did not catch up")


def nearest(server: Server, body: dict) -> list[dict]:
    response = httpx.post(server.url + "/nearest", json=body, timeout=60)
    response.raise_for_status()
    return response.json()["results"]


def check(server: Server, live: list[int], deleted: list[int], rng: np.random.Generator) -> dict:
    """Every answer right, from whichever worker gives it (4 tries of each, fresh connections)."""
    own = [int(i) for i in rng.choice(live, 50, replace=False)]
    for i in own:
        for _ in range(4):
            image = {"image": base64.b64encode(png_bytes(i)).decode(), "k": 1}
            assert nearest(server, image)[0]["id"] == f"img{i}", i
    gone = {f"img{i}" for i in deleted}
    for i in own[:20]:
        for _ in range(4):
            hits = nearest(server, {"id": f"img{i}", "k": 100})
            assert not gone & {h["id"] for h in hits}, "a deleted image came back"
    for label in (3, 7):
        answers = []
        for _ in range(4):
            query = {"id": f"img{own[0]}", "k": 20, "filter": {"label": label}}
            hits = nearest(server, query)
            assert len(hits) == 20 and all(h["metadata"]["label"] == label for h in hits)
            assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
            answers.append([h["id"] for h in hits])
        assert all(a == answers[0] for a in answers), "workers disagree on a filtered search"
    return {"own_top_hit": len(own), "deleted_checked": len(deleted), "filters": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "fashion-mnist")
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--churn", type=int, default=20_000)
    parser.add_argument("--warm-up", type=int, default=10_000)
    add_results_argument(parser)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    result: dict = {"images": args.images, "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        server = Server(args.model, data, LOOKALIKE_WORKERS=str(args.workers))
        server.start(timeout_s=120)
        try:
            started = time.monotonic()
            upload(server, 0, args.warm_up)
            caught_up(server)
            warm = memory(server)
            upload(server, args.warm_up, args.images - args.warm_up)
            result["upload_s"] = round(time.monotonic() - started, 1)
            caught_up(server)
            time.sleep(10)  # a compaction in flight settles
            caught_up(server)
            full = memory(server)
            result["bytes_per_image"] = growth(warm, full, args.images - args.warm_up)
            result["pss_total_mb"] = round(sum(m["pss"] for m in full.values()) / 2**20)
            result["anonymous_mb"] = [round(m["anonymous"] / 2**20) for m in full.values()]
            print(json.dumps(result), flush=True)
            deleted = [int(i) for i in rng.choice(args.images, args.churn // 2, replace=False)]
            delete(server, deleted)
            upload(server, args.images, args.churn // 2)
            readies = caught_up(server)
            time.sleep(5)
            readies = caught_up(server)
            result["generations"] = sorted({str(r.get("index_generation")) for r in readies})
            result["generation_mb"] = generation_mb(data)
            live = sorted(set(range(args.images + args.churn // 2)) - set(deleted))
            result["checks"] = check(server, live, deleted, rng)
        finally:
            server.stop()
        result["restart_full_s"] = round(server.start(timeout_s=300), 2)
        server.stop()
        empty_server = Server(args.model, Path(tmp) / "empty", LOOKALIKE_WORKERS=str(args.workers))
        result["restart_empty_s"] = round(empty_server.start(timeout_s=120), 2)
        empty_server.stop()
    print(json.dumps(result, indent=2))
    write(args.results, "worker_memory", result)


if __name__ == "__main__":
    main()
