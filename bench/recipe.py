"""Choose the defaults for a folder of colour images by measurement (training/RECIPE.md).

    apt-get install openclipart-png      # 8,121 colour clip-art PNGs, 22 top-level folders
    python bench/recipe.py --data /usr/share/openclipart/png --epochs 6 [--only NAME ...]

Each probe is one `python -m training train` run on the folder, at the same epochs and seed,
with the settings its name says. From each artifact's metrics.json (training/evaluate.py) it
records copy detection (R@1, R@10, mAP) beside raw pixels and a random-init encoder, and kNN
top-1 by top-level folder (--label-depth 1), with the training time. Writes
RESULTS/recipe.json; a probe already there is skipped unless --again, and a probe whose
artifact is already complete is read rather than trained again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from report import ROOT, add_results_argument, table, write

# name → settings; every probe also gets --data, --epochs, --label-depth 1 and its own --out.
PROBES = {
    "today: 64 px, crop 0.2, jitter 0.5": ["--image-size", "64"],
    "32 px, crop 0.2, jitter 0.5": ["--image-size", "32", "--set", "crop_min_scale=0.2"],
    "32 px, crop 0.35, jitter 0.5": ["--image-size", "32", "--set", "crop_min_scale=0.35"],
    "32 px, crop 0.2, jitter 0.25": [
        "--image-size", "32", "--set", "crop_min_scale=0.2", "--set", "colour_jitter=0.25",
    ],
    "32 px, crop 0.2, jitter 1.0": [
        "--image-size", "32", "--set", "crop_min_scale=0.2", "--set", "colour_jitter=1.0",
    ],
    "32 px, crop 0.5, jitter 0.5": ["--image-size", "32", "--set", "crop_min_scale=0.5"],
    "32 px, crop 0.35, jitter 0.5, widths 48-96-192": [
        "--image-size", "32", "--set", "crop_min_scale=0.35", "--set", "widths=[48,96,192]",
    ],
    "48 px, crop 0.35, jitter 0.5": ["--image-size", "48", "--set", "crop_min_scale=0.35"],
    "64 px, crop 0.35, jitter 0.5": ["--image-size", "64", "--set", "crop_min_scale=0.35"],
}  # fmt: skip
COLUMNS = [
    ("probe", "probe"),
    ("copy_r1", "R@1"),
    ("copy_r1_raw_pixels", "pixels"),
    ("copy_r1_random_init", "random"),
    ("copy_r10", "R@10"),
    ("copy_map", "mAP"),
    ("knn", "kNN top-1"),
    ("knn_raw_pixels", "kNN pixels"),
    ("train_min", "train min"),
]


def _finished(out: Path, epochs: int) -> bool:
    """An artifact of this probe at these epochs is already complete (a run was cut short)."""
    if not (out / "metrics.json").exists():
        return False
    return json.loads((out / "model.json").read_text())["training"]["epochs"] == epochs


def _recorded(path: Path) -> list[dict]:
    return json.loads(path.read_text())["probes"] if path.exists() else []


def run_probe(name: str, settings: list[str], args: argparse.Namespace) -> dict:
    out = args.models / name.replace(" ", "").replace(",", "_").replace(":", "")
    command = [
        sys.executable, "-m", "training", "train", "--data", str(args.data),
        "--epochs", str(args.epochs), "--label-depth", "1", *settings, "--out", str(out),
    ]  # fmt: skip
    started = time.monotonic()
    if args.again or not _finished(out, args.epochs):
        print("$", " ".join(command), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    info = json.loads((out / "model.json").read_text())
    row = {"probe": name, "settings": settings, "epochs": args.epochs}
    for metric in ("copy_r1", "copy_r10", "copy_map"):
        row[metric] = metrics[metric]["model"]
    row["copy_r1_raw_pixels"] = metrics["copy_r1"]["raw_pixels"]
    row["copy_r1_random_init"] = metrics["copy_r1"]["random_init"]
    row["copy_r10_raw_pixels"] = metrics["copy_r10"]["raw_pixels"]
    row["copy_r10_random_init"] = metrics["copy_r10"]["random_init"]
    knn = metrics.get("knn_top1_k200_t0.1", {})
    row["knn"], row["knn_raw_pixels"] = knn.get("model"), knn.get("raw_pixels")
    row["knn_random_init"] = knn.get("random_init")
    row["train_min"] = info["training"]["wall_time_s"] / 60
    row["run_min"] = (time.monotonic() - started) / 60
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/usr/share/openclipart/png"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--models", type=Path, default=Path("/tmp/lookalike-recipe"))
    parser.add_argument("--only", nargs="*", default=None, help="probe names to run")
    parser.add_argument("--again", action="store_true", help="rerun probes already recorded")
    add_results_argument(parser)
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data} is not a folder (apt-get install openclipart-png)")
    path = args.results / "recipe.json"
    for name, settings in PROBES.items():
        if args.only is not None and name not in args.only:
            continue
        key = (name, args.epochs)
        if not args.again and any((r["probe"], r["epochs"]) == key for r in _recorded(path)):
            continue
        row = run_probe(name, settings, args)
        # Read the file again: another run of this script may have written to it meanwhile.
        rows = [r for r in _recorded(path) if (r["probe"], r["epochs"]) != key]
        write(args.results, "recipe", {"data": str(args.data), "probes": [*rows, row]})
    print(table(_recorded(path), COLUMNS))


if __name__ == "__main__":
    main()
