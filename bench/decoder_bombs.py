"""Decoder bombs: how fast the decode path refuses each, and the memory a request of them takes.

    python bench/decoder_bombs.py [--count 64] [--repeat 20] [--unguarded]

Starts no server. The bombs are the "bomb-" files of testkit/hostile_corpus.py, most of them
small pictures behind lying headers, plus a real one too slow to make in the tests: a flat
8192×8192 AV1 picture behind a 64×64 ispe (about 5 s and 0.9 GB to encode). For each: the best
of --repeat times of service.imaging.decode_image to its ImageTooLargeError (413); then, in a
fresh subprocess so that the peak is its own, service.inputs.decode_all on one request of
--count copies: its status, and the process's peak RSS (VmHWM) before and after the call.
Last, one request mixing all the bombs. --unguarded also times Pillow alone opening and loading
each (what the service did before its header checks), in a subprocess with a 60 s limit.
Writes RESULTS/decoder_bombs.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image
from report import add_results_argument, table, write

from service.errors import ApiError
from service.imaging import DEFAULT_MAX_PIXELS, ImageError, InputSpec, decode_image
from service.inputs import NamedImage, decode_all
from testkit.hostile_corpus import encode, header_size, specimens

SPEC = InputSpec(channels=1, height=28, width=28, colour_mode="L")  # the shipped model's input
BUDGET = 200_000_000  # Settings.max_pixels_per_request's default
UNGUARDED_TIMEOUT_S = 60


def write_bombs(folder: Path) -> list[Path]:
    bombs = {s.name: s.data for s in specimens() if s.name.startswith("bomb-")}
    flat = Image.new("L", (8192, 8192), 128)
    bombs["bomb-av1-8192.avif"] = header_size(encode(flat, "AVIF", speed=10), 64, 64)
    for name, data in bombs.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in bombs]


def peak_mb() -> float:
    """This process's peak RSS. Not ru_maxrss: Linux carries the parent's peak across exec."""
    status = Path("/proc/self/status").read_text()
    return (
        int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
        / 1024
    )


def refusal_ms(bomb: Path, repeat: int) -> float:
    data, best = bomb.read_bytes(), float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            decode_image(data, SPEC)
        except ImageError:
            best = min(best, time.perf_counter() - start)
        else:
            raise AssertionError(f"{bomb.name} was decoded")
    return best * 1000


def request(paths: list[str]) -> dict:
    """In this (fresh) process: decode_all on one request of these bombs."""
    images = [NamedImage(f"files[{i}]", Path(p).read_bytes()) for i, p in enumerate(paths)]
    before = peak_mb()
    try:
        asyncio.run(
            decode_all(images, SPEC, max_pixels=DEFAULT_MAX_PIXELS, max_request_pixels=BUDGET)
        )
        status = 200
    except ApiError as exc:
        status = exc.status
    return {"status": status, "peak_before_mb": before, "peak_mb": peak_mb()}


def unguarded(path: str) -> dict:
    """In this (fresh) process: Pillow alone opens and loads the bomb, as decode_image would."""
    data = Path(path).read_bytes()
    before, start = peak_mb(), time.perf_counter()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("L", (SPEC.width, SPEC.height))
            image.load()
            outcome = f"decoded {image.size[0]}×{image.size[1]}"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"[:80]
    seconds = time.perf_counter() - start
    return {"s": seconds, "outcome": outcome, "peak_before_mb": before, "peak_mb": peak_mb()}


def in_subprocess(*args: str, timeout: float | None = None) -> dict:
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"s": timeout, "outcome": f"still running after {timeout:.0f} s (killed)"}
    if done.returncode:
        raise RuntimeError(f"{args[:2]} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def measure(bombs: list[Path], args: argparse.Namespace) -> list[dict]:
    rows = []
    for bomb in bombs:
        served = in_subprocess("request", *[str(bomb)] * args.count)
        row = {
            "bomb": bomb.name,
            "bytes": bomb.stat().st_size,
            "ms": refusal_ms(bomb, args.repeat),
            "status": served["status"],
            "before_mb": served["peak_before_mb"],
            "peak_mb": served["peak_mb"],
        }
        if args.unguarded:
            before = in_subprocess("unguarded", str(bomb), timeout=UNGUARDED_TIMEOUT_S)
            row |= {"unguarded_s": before["s"], "unguarded_mb": before.get("peak_mb", "")}
            row["unguarded"] = before["outcome"]
        rows.append(row)
    mixed = in_subprocess("request", *[str(bombs[i % len(bombs)]) for i in range(args.count)])
    rows.append({"bomb": f"all {len(bombs)} mixed", "status": mixed["status"]})
    rows[-1] |= {"before_mb": mixed["peak_before_mb"], "peak_mb": mixed["peak_mb"]}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=64, help="bombs in one request")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--unguarded", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    add_results_argument(parser)
    args = parser.parse_args()
    if args.child:
        mode, *paths = args.child
        print(json.dumps(request(paths) if mode == "request" else unguarded(paths[0])))
        return
    with tempfile.TemporaryDirectory() as folder:
        rows = measure(write_bombs(Path(folder)), args)
    columns = [("bomb", "bomb"), ("bytes", "bytes"), ("ms", "ms to 413")]
    columns += [("status", f"{args.count}-bomb request"), ("before_mb", "peak MB before")]
    columns += [("peak_mb", "peak MB after")]
    if args.unguarded:
        columns += [("unguarded_s", "unguarded s"), ("unguarded_mb", "unguarded peak MB")]
        columns += [("unguarded", "unguarded outcome")]
    print(table(rows, columns))
    write(args.results, "decoder_bombs", {"count": args.count, "rows": rows})


if __name__ == "__main__":
    main()
