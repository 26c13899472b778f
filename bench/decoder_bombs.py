"""Decoder bombs against a real server: the time to refuse each, and the worker's peak memory.

    python bench/decoder_bombs.py [--model models/fashion-mnist] [--copies 64]

Each file of tests/hostile_corpus.py whose header lies about its size, or declares a bomb, goes
to `/embed` alone (5 times; the median is reported), then `--copies` of them in one request.
The worker's peak resident memory (VmHWM) is read before and after. Writes
bench/results/decoder_bombs.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hostile_corpus import Specimen, header_lies, specimens
from tests.support import running


def peak_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line[:6] == "VmHWM:")) / 1024


def bombs() -> list[Specimen]:
    declared = [s for s in specimens() if s.name.startswith("bomb-")]
    return declared + [s for s in header_lies() if s.status != 200]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/fashion-mnist"))
    parser.add_argument("--copies", type=int, default=64)
    args = parser.parse_args()
    results: dict = {"files": []}
    with tempfile.TemporaryDirectory() as tmp, running(args.model, Path(tmp) / "data") as server:
        assert server.process is not None
        pid = server.process.pid
        with httpx.Client(base_url=server.url, timeout=120) as client:
            warm = next(s for s in specimens() if s.name == "photo.avif")
            assert client.post("/embed", files=[("files", (warm.name, warm.data))]).is_success
            results["peak_mb_before"] = peak_mb(pid)
            print(json.dumps({"peak_mb_before": results["peak_mb_before"]}), flush=True)
            files = bombs()
            for bomb in files:
                times, status = [], 0
                for _ in range(5):
                    started = time.perf_counter()
                    status = client.post(
                        "/embed", files=[("files", (bomb.name, bomb.data))]
                    ).status_code
                    times.append(time.perf_counter() - started)
                row = {
                    "file": bomb.name,
                    "bytes": len(bomb.data),
                    "status": status,
                    "seconds_median": statistics.median(times),
                    "seconds_max": max(times),
                }
                results["files"].append(row)
                print(json.dumps(row), flush=True)
            mix = [files[i % len(files)] for i in range(args.copies)]
            started = time.perf_counter()
            answer = client.post("/embed", files=[("files", (b.name, b.data)) for b in mix])
            results["request"] = {
                "images": len(mix),
                "status": answer.status_code,
                "seconds": time.perf_counter() - started,
                "peak_mb_after": peak_mb(pid),
            }
            print(json.dumps(results["request"]), flush=True)
    out = Path(__file__).parent / "results" / "decoder_bombs.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
