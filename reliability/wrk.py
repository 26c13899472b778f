"""Load from `wrk` (Debian: apt-get install wrk): one fixed POST body, every status counted.

wrk is a closed-loop C client: `connections` keep one request each in flight. Its Lua hooks
count the answers by status, check that every 503 carries Retry-After, and report the
latency percentiles of all answers. Shared by reliability/overload.py and bench/serve.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx

LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE")
local file = io.open(os.getenv("WRK_BODY"), "rb")
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
  io.write(', "requests": ' .. summary.requests)
  io.write(string.format(', "p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f}\n',
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000))
end
"""


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("error: wrk is not installed (Debian: apt-get install wrk)")
    return path


def multipart(files: list[tuple[str, bytes]], field: str = "files") -> tuple[bytes, str]:
    """A multipart/form-data body with one part per (filename, PNG bytes): (body, content type).
    httpx encodes it, exactly as the tests' clients send it."""
    parts = [(field, (name, content, "image/png")) for name, content in files]
    request = httpx.Request("POST", "http://wrk.invalid/", files=parts)
    return request.read(), request.headers["Content-Type"]


def run(
    url: str,
    body: bytes,
    content_type: str,
    *,
    connections: int,
    seconds: float,
    threads: int = 1,
    timeout_s: int = 30,
) -> dict:
    """POST `body` to `url` for `seconds`; returns statuses, requests/s and latency (ms)."""
    with tempfile.TemporaryDirectory() as tmp:
        script, body_file = Path(tmp) / "post.lua", Path(tmp) / "body"
        script.write_text(LUA)
        body_file.write_bytes(body)
        done = subprocess.run(
            [
                require_wrk(),
                f"-t{min(threads, connections)}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                f"{timeout_s}s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            env={"WRK_BODY": str(body_file), "WRK_CONTENT_TYPE": content_type, "PATH": "/usr/bin"},
            check=False,
        )
    if "LUA_RESULT " not in done.stdout:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = json.loads(done.stdout.split("LUA_RESULT ", 1)[1])
    result["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))
    return result
