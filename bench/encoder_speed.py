"""How fast an artifact's encoder embeds through ONNX Runtime on this machine (the model limit).

    python bench/encoder_speed.py models/fashion-mnist [--seconds 5]

Prints images/s for several batch sizes, measured back to back in one run, and writes
RESULTS/encoder_speed.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from report import add_results_argument, table, write

from service.encoder import load_encoder


def images_per_second(encoder, batch: int, seconds: float) -> float:
    spec = encoder.info.spec
    rng = np.random.default_rng(0)
    pixels = list(rng.integers(0, 256, (batch, spec.height, spec.width, spec.channels), np.uint8))
    encoder.embed_pixels(pixels)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        encoder.embed_pixels(pixels)
        done += batch
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batches", default="1,16,64,256")
    add_results_argument(parser)
    args = parser.parse_args()
    encoder = load_encoder(args.artifact)
    rows = [
        {"batch": int(b), "images_per_s": images_per_second(encoder, int(b), args.seconds)}
        for b in args.batches.split(",")
    ]
    print(table(rows, [("batch", "batch"), ("images_per_s", "images/s")]))
    write(
        args.results,
        "encoder_speed",
        {"artifact": str(args.artifact), "version": encoder.info.version, "rows": rows},
    )


if __name__ == "__main__":
    main()
