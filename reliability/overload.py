"""Overload: far more concurrent clients than the service can serve, driven by wrk.

    python -m reliability.overload [--model models/fashion-mnist] [--factor 4] [--seconds 30]

1. Capacity: wrk with 32 connections sends single-image raw /embed requests for 5 s.
2. Overload: `factor` × that many connections for `seconds`, against a short queue
   (LOOKALIKE_QUEUE_MAX_IMAGES), so the service must shed load.
Every answer must be 200, or 503 with Retry-After (counted by wrk's Lua hooks). The served
requests' p99 comes from the service's own latency histogram (status 200 only), as the upper
edge of its bucket. RSS is read before and after a cool-down. Needs `wrk` (apt-get install wrk).
Writes reliability/results/overload.json.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import httpx

from reliability import wrk
from service.fashion_mnist import load_split
from service.imaging import encode_png
from testkit.server import Server

# Images that may wait beside the (up to 64) in the model: 128 single-image clients overflow it.
QUEUE = 32


def served_histogram(url: str) -> dict[float, float]:
    text = httpx.get(f"{url}/metrics").text
    pattern = re.compile(
        r'lookalike_request_seconds_bucket\{le="([^"]+)",method="POST",'
        r'route="/embed",status="200"\} ([\d.e+]+)'
    )
    return {float(le): float(count) for le, count in pattern.findall(text)}


def p99_upper_bound(before: dict[float, float], after: dict[float, float]) -> float:
    delta = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = delta[float("inf")]
    return next(le for le, count in delta.items() if count >= 0.99 * total) * 1000


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
        / 1024
    )


def measure(model: Path, *, factor: int, seconds: float, queue: int) -> dict:
    """Capacity at 32 connections, then `factor`× the connections against a short queue."""
    body = encode_png(load_split("test")[0][0])
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(model, Path(tmp) / "data", LOOKALIKE_QUEUE_MAX_IMAGES=str(queue))
        server.start()
        try:
            url = f"{server.url}/embed"
            capacity = wrk.run(url, body, "image/png", connections=32, seconds=5, threads=2)
            rss_before = rss_mb(server.process.pid)
            histogram = served_histogram(server.url)
            overload = wrk.run(
                url, body, "image/png", connections=32 * factor, seconds=seconds, threads=2
            )
            p99_ms = p99_upper_bound(histogram, served_histogram(server.url))
            time.sleep(5)
            alive = httpx.get(f"{server.url}/healthz").status_code == 200
            rss_after = rss_mb(server.process.pid)
        finally:
            server.stop()
    unexpected = set(overload["statuses"]) - {"200", "503"}
    return {
        "capacity": capacity,
        "overload_connections": 32 * factor,
        "overload_seconds": seconds,
        "queue_max_images": queue,
        "overload": overload,
        "served_p99_ms_at_most": p99_ms,
        "alive_after": alive,
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_after": round(rss_after, 1),
        "passed": alive and not unexpected and not overload["missing_retry_after"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/fashion-mnist"))
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--queue", type=int, default=QUEUE, help="LOOKALIKE_QUEUE_MAX_IMAGES")
    args = parser.parse_args()
    result = measure(args.model, factor=args.factor, seconds=args.seconds, queue=args.queue)
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "overload.json").write_text(json.dumps(result, indent=2) + "\n")
    raise SystemExit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
