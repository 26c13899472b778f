"""What building a new model's vectors in the background costs serving (issue 21: serving keeps
at least 80 % of its throughput while a kept model's vectors build).

    python bench/model_vectors_load.py [--images 6000] [--seconds 8]

Starts `python -m service` (the shipped Fashion-MNIST model, `--workers auto`), uploads
`--images` distinct 28×28 PNGs, and measures single-image `/embed` and `/nearest` (multipart,
wrk, 32 connections: the CPU-bound paths, which the builder competes with) in rounds:
1. before: no other model kept;
2. during: `python -m service model add models/icons` (the 128-px colour model, the slower one
   to build), measured while its vectors build (the log says how far; every round must end
   before the build does, or the run says so);
3. after: both models kept, nothing building.
A row is each round's requests/s; the ratio is "during" ÷ the mean of "before" and "after", so
that the machine's drift over the run counts against neither.
Writes RESULTS/model_vectors_load.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from report import ROOT, add_results_argument, table, write

from reliability import wrk
from testkit.images import png_bytes
from testkit.server import AUTH, Server

NEW_MODEL = ROOT / "models" / "icons"


def fill(server: Server, images: int) -> None:
    for start in range(0, images, 250):
        seeds = range(start, min(start + 250, images))
        httpx.post(
            server.url + "/images",
            files=[("files", (f"{s}.png", png_bytes(s), "image/png")) for s in seeds],
            headers=AUTH,
            timeout=300,
        ).raise_for_status()


def missing(server: Server, version: str) -> int:
    kept = httpx.get(server.url + "/info", timeout=30).json()["kept_models"]
    model = next(m for m in kept if m["version"] == version)
    return model["images"] - model["vectors"]


def measure(server: Server, seconds: float) -> dict[str, float]:
    embed_body, embed_type = wrk.multipart([("q.png", png_bytes(1))])
    nearest_body, nearest_type = wrk.multipart([("q.png", png_bytes(2))], field="file")
    return {
        "embed": wrk.run(
            server.url + "/embed", embed_body, embed_type, connections=32, seconds=seconds
        )["rps"],
        "nearest": wrk.run(
            server.url + "/nearest", nearest_body, nearest_type, connections=32, seconds=seconds
        )["rps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--seconds", type=float, default=8.0, help="per wrk run")
    add_results_argument(parser)
    args = parser.parse_args()
    wrk.require_wrk()
    version = json.loads((NEW_MODEL / "model.json").read_text())["version"]
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(ROOT / "models" / "fashion-mnist", Path(tmp) / "data")
        server.start(timeout_s=120)
        try:
            fill(server, args.images)
            rounds = {"before": [measure(server, args.seconds)]}
            server.run_command("model", "add", str(NEW_MODEL))
            time.sleep(3)  # every worker has loaded it; the builder has started
            rounds["during"] = [measure(server, args.seconds) for _ in range(2)]
            left = missing(server, version)
            if not left:
                raise SystemExit("the build ended before the rounds did: raise --images")
            while missing(server, version):
                time.sleep(2)
            rounds["after"] = [measure(server, args.seconds)]
        finally:
            server.stop()
    rows = []
    for path in ("embed", "nearest"):
        mean = {name: statistics.mean(r[path] for r in runs) for name, runs in rounds.items()}
        baseline = (mean["before"] + mean["after"]) / 2
        rows.append(
            {
                "request": f"{path}, 1 image, multipart",
                "before": mean["before"],
                "during": mean["during"],
                "after": mean["after"],
                "during_vs_baseline": mean["during"] / baseline,
            }
        )
    print(
        table(
            rows,
            [
                ("request", "request"),
                ("before", "req/s before"),
                ("during", "req/s while vectors build"),
                ("after", "req/s after"),
                ("during_vs_baseline", "during ÷ mean(before, after)"),
            ],
        )
    )
    print(f"{left} of {args.images} vectors were still to build when the rounds ended")
    write(
        args.results,
        "model_vectors_load",
        {"images": args.images, "seconds": args.seconds, "rounds": rounds, "rows": rows},
    )


if __name__ == "__main__":
    main()
