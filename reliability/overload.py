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
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from service.fashion_mnist import load_split
from service.imaging import encode_png
from tests.support import Server

LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/png"
local file = io.open(os.getenv("LOOKALIKE_BODY"), "rb")
wrk.body = file:read("*all")
file:close()
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} missing_retry_after = 0 end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 503 and headers["retry-after"] == nil and headers["Retry-After"] == nil then
    missing_retry_after = missing_retry_after + 1
  end
end
function done(summary, latency, requests)
  local total, missing = {}, 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + count
    end
    missing = missing + thread:get("missing_retry_after")
  end
  local parts = {}
  for status, count in pairs(total) do table.insert(parts, '"' .. status .. '": ' .. count) end
  io.write('LUA_RESULT {"statuses": {' .. table.concat(parts, ", ") .. '}, ')
  io.write('"missing_retry_after": ' .. missing .. ', "socket_errors": ')
  local errors = summary.errors
  io.write(errors.connect + errors.read + errors.write + errors.timeout)
  io.write(', "requests": ' .. summary.requests .. '}\n')
end
"""


def wrk(url: str, connections: int, seconds: float, script: Path, body: Path) -> dict:
    done = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{int(seconds)}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            f"{url}/embed",
        ],
        capture_output=True,
        text=True,
        env={"LOOKALIKE_BODY": str(body), "PATH": "/usr/bin:/bin"},
    )
    result = json.loads(done.stdout.split("LUA_RESULT ", 1)[1])
    result["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))
    return result


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/fashion-mnist"))
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--queue", type=int, default=64, help="LOOKALIKE_QUEUE_MAX_IMAGES")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        script, body = Path(tmp) / "post.lua", Path(tmp) / "body.png"
        script.write_text(LUA)
        body.write_bytes(encode_png(load_split("test")[0][0]))
        server = Server(args.model, Path(tmp) / "data", LOOKALIKE_QUEUE_MAX_IMAGES=str(args.queue))
        server.start()
        try:
            capacity = wrk(server.url, 32, 5, script, body)
            rss_before = rss_mb(server.process.pid)
            histogram = served_histogram(server.url)
            overload = wrk(server.url, 32 * args.factor, args.seconds, script, body)
            p99_ms = p99_upper_bound(histogram, served_histogram(server.url))
            time.sleep(5)
            alive = httpx.get(f"{server.url}/healthz").status_code == 200
            rss_after = rss_mb(server.process.pid)
        finally:
            server.stop()
    result = {
        "capacity": capacity,
        "overload_connections": 32 * args.factor,
        "overload_seconds": args.seconds,
        "queue_max_images": args.queue,
        "overload": overload,
        "served_p99_ms_at_most": p99_ms,
        "alive_after": alive,
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_after": round(rss_after, 1),
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "overload.json").write_text(json.dumps(result, indent=2) + "\n")
    unexpected = set(overload["statuses"]) - {"200", "503"}
    ok = alive and not unexpected and not overload["missing_retry_after"]
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
