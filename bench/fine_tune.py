"""How much a parent model helps on a folder: fine-tuned from it against trained from scratch.

    python bench/fine_tune.py --data FOLDER --cross-style FOLDER/a FOLDER/b \\
        [--parent models/icons] [--epochs 30] [--device cpu] [--batch-size N]
        [--out bench/results/fine_tune]

Each run trains flat (no --group-by), as a user with a plain folder would:
    init            python -m training train --data FOLDER --init PARENT --epochs N
    scratch         python -m training train --data FOLDER --epochs N   (today's defaults)
    scratch_parent  the same at the parent's image size, widths and depths
Then each artifact, and the parent as it is, is measured on the folder: cross-style recall
between the two subfolders (training/cross_style.py) and copy detection, beside raw pixels and
random init (`python -m training evaluate`'s protocol). On a GPU (--device cuda) the three runs
train at once. Writes OUT/fine_tune.json and OUT/log.txt, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.evaluate import evaluate_artifact  # noqa: E402
from training.parent import Parent  # noqa: E402

METRICS = ("cross_style_r1", "cross_style_r10", "copy_r1")


def runs(args: argparse.Namespace, work: Path) -> dict[str, list[str]]:
    base = [sys.executable, "-m", "training", "train", "--data", str(args.data)]
    base += ["--epochs", str(args.epochs), "--label-depth", "0", "--device", args.device]
    base += ["--set", "evaluate=false"]  # measured below, with cross-style
    if args.batch_size:
        base += ["--batch-size", str(args.batch_size)]
    settings = Parent.open(args.parent).settings()
    parent_arch = ["--image-size", str(settings["image_size"])]
    for key in ("widths", "depths"):
        parent_arch += ["--set", f"{key}={list(settings[key])}".replace(" ", "")]
    return {
        "init": [*base, "--init", str(args.parent), "--out", str(work / "init")],
        "scratch": [*base, "--out", str(work / "scratch")],
        "scratch_parent": [*base, *parent_arch, "--out", str(work / "scratch_parent")],
    }


def train_all(commands: dict[str, list[str]], parallel: bool, log) -> dict[str, float]:
    """Each run's wall seconds; a failed run stops the benchmark with its output."""
    started, procs, walls = {}, {}, {}
    for name, argv in commands.items():
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        started[name] = time.monotonic()
        procs[name] = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if not parallel:
            procs[name].wait()
            walls[name] = time.monotonic() - started[name]
    for name, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"{name} failed (exit {proc.returncode}); see the log")
        walls.setdefault(name, time.monotonic() - started[name])
    return walls


def measure(model: Path, data: str | None, pair: tuple[str, str]) -> dict:
    result = evaluate_artifact(model, data=data, label_depth=0, cross_style=pair).result
    return {m: {k: v for k, v in result["metrics"][m].items() if k != "protocol"} for m in METRICS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the folder to train on")
    parser.add_argument("--cross-style", nargs=2, required=True, metavar=("A", "B"))
    parser.add_argument("--parent", type=Path, default=ROOT / "models" / "icons")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, help="(default: training's)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or ROOT / "bench" / "results" / "fine_tune"),
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "models"
    pair = (args.cross_style[0], args.cross_style[1])
    commands = runs(args, work)
    with open(args.out / "log.txt", "w") as log:
        walls = train_all(commands, parallel=args.device.startswith("cuda"), log=log)
    report: dict = {"data": str(args.data), "epochs": args.epochs, "device": args.device}
    for name in commands:
        report[name] = {"wall_s": round(walls[name], 1), **measure(work / name, None, pair)}
    # The init run's evaluation measured its parent as it is, on the same split and pair.
    report["parent"] = {
        metric: {**{k: v for k, v in row.items() if k != "parent"}, "model": row["parent"]}
        for metric, row in report["init"].items()
        if metric in METRICS
    }
    report["commands"] = {name: " ".join(argv[1:]) for name, argv in commands.items()}
    (args.out / "fine_tune.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'run':<16}" + "".join(f"{m:>18}" for m in METRICS) + f"{'wall s':>9}")
    for name in ("parent", *commands):  # the parent first
        row = report[name]
        cells = "".join(f"{row[m]['model']:>18.3f}" for m in METRICS)
        print(f"{name:<16}{cells}{row.get('wall_s', 0):>9.0f}")
    floors = report["parent"]
    print(
        "floors (the parent's input size): raw pixels "
        + ", ".join(f"{m} {floors[m]['raw_pixels']:.3f}" for m in METRICS)
    )
    print(f"wrote {args.out / 'fine_tune.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
