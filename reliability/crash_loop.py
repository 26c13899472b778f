"""Crash loop: upload from several clients, kill -9 the server at random, restart, check.

    python -m reliability.crash_loop [--model models/fashion-mnist] [--kills 20] [--clients 4]

After every restart: every acknowledged id is in the store (listed), its own vector is its top
/nearest hit, the images acknowledged in that round are their own top hit by image too, and the
index count equals the store count. Prints one JSON line per round and a summary; writes
reliability/results/crash_loop.json.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from pathlib import Path

import httpx

from testkit.images import png_bytes
from testkit.server import API_KEY, Server

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def uploader(
    url: str, worker: int, start_seed: int, stop: threading.Event, acknowledged: dict[str, int]
) -> None:
    with httpx.Client(base_url=url, timeout=10, headers=AUTH) as client:
        seed = start_seed
        while not stop.is_set():
            image_id = f"w{worker}-{seed}"
            try:
                response = client.post(
                    "/images", data={"ids": image_id}, files=[("files", ("x.png", png_bytes(seed)))]
                )
            except httpx.TransportError:
                return  # the server died under us; this upload was never acknowledged
            if response.status_code == 201:
                acknowledged[image_id] = seed
            seed += 1


def listed_ids(client: httpx.Client) -> set[str]:
    ids, cursor = set(), None
    while True:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = client.get("/images", params=params).json()
        ids |= {item["id"] for item in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


def check(client: httpx.Client, acknowledged: dict[str, int], fresh: list[str]) -> dict:
    ready = client.get("/readyz").json()
    missing = set(acknowledged) - listed_ids(client)
    not_top = [
        i
        for i in acknowledged
        if client.post("/nearest", json={"id": i, "k": 1}).json()["results"][0]["id"] != i
    ]
    by_image = [
        i
        for i in fresh
        if client.post(
            "/nearest", files=[("file", ("q.png", png_bytes(acknowledged[i])))], data={"k": "1"}
        ).json()["results"][0]["id"]
        != i
    ]
    return {
        "store": ready["images"],
        "index": ready["indexed"],
        "missing": len(missing),
        "not_own_top_hit": len(not_top),
        "not_own_top_hit_by_image": len(by_image),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/fashion-mnist"))
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    acknowledged: dict[str, int] = {}
    rounds = []
    with tempfile.TemporaryDirectory() as data_dir:
        server = Server(args.model, Path(data_dir))
        server.start()
        for kill in range(1, args.kills + 1):
            before = set(acknowledged)
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=uploader,
                    args=(server.url, w, kill * 100_000 + w * 10_000, stop, acknowledged),
                )
                for w in range(args.clients)
            ]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.5, 2.5))
            server.kill()
            stop.set()
            for t in threads:
                t.join()
            recovery_s = server.start()
            fresh = sorted(set(acknowledged) - before)
            with httpx.Client(base_url=server.url, timeout=60) as client:
                result = {
                    "kill": kill,
                    "acknowledged": len(acknowledged),
                    "new": len(fresh),
                    "recovery_s": round(recovery_s, 2),
                    **check(client, acknowledged, fresh),
                }
            rounds.append(result)
            print(json.dumps(result), flush=True)
        server.stop()
    failures = sum(
        r["missing"]
        + r["not_own_top_hit"]
        + r["not_own_top_hit_by_image"]
        + (r["store"] != r["index"])
        for r in rounds
    )
    summary = {
        "kills": len(rounds),
        "ids_acknowledged": len(acknowledged),
        "recovery_s_max": max(r["recovery_s"] for r in rounds),
        "recovery_s_mean": round(sum(r["recovery_s"] for r in rounds) / len(rounds), 2),
        "failures": failures,
    }
    print(json.dumps(summary))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "crash_loop.json").write_text(
        json.dumps({"rounds": rounds, "summary": summary}, indent=2)
    )
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
