"""The colour model's probes, trained side by side on a lent GPU in one device call (issue 18).

    python bench/gpu_icons.py prepare            # here: .icons/ and .icons.tgz (≈ 30 MiB)
    python bench/gpu_icons.py run --dry-run      # proves it here: two tiny probes on the CPU
    python bench/gpu_icons.py run --budget-s 200 # on the GPU machine (the device tool's `run`)

`prepare` reads `make icons-corpus`'s folder (data/icons) and writes the git-ignored .icons/:
    train/<theme>/<name>.webp    every theme but the held-out pair, and the clip art
    heldout/<theme>/<name>.webp  the held-out pair (bench/icons_corpus.py's HELD_OUT)
each flattened onto white at the corpus's size and stored as WebP at quality 90, so that the
whole set fits the 64 MiB that travels to the GPU machine. The shipped model's card names
.icons/train as its data; `python -m training export --model models/icons` re-reads it here.

`run` trains every probe in PROBES at once (16 cores, one GPU; NT-Xent, the epoch count fitted
to --budget-s), each with `--set evaluate=false` (copy detection over the whole bank would cost
minutes of the lease on the CPU), then measures each one's cross-style retrieval between the
held-out themes through its ONNX graph, as the service runs it. Into $OUT (else --out):
    report.json  each probe's command, epochs, wall time and cross-style R@1 / R@10
    log.txt      every probe's output
    <probe>.safetensors  its weights without the optimiser state (at most 6 probes)
Then, here, for the probe to ship: copy its weights to models/icons/weights.safetensors,
`python -m training export --model models/icons` (whitening, ONNX, evaluation, card), and
`python -m training evaluate --model models/icons --cross-style data/icons/oxygen
data/icons/breeze` (cross-style beside raw pixels and random init, into the card).

The device call, with the wheels of bench/gpu_prepare.sh (the decoder imports pillow_heif):
    run(command="tar xzf .icons.tgz && python3 bench/gpu_icons.py run --budget-s 200",
        carry=[".icons.tgz", ".whl"])
(17,630 small files travel as one archive: as a folder they count over the 64 MiB limit.)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gpu_run import DRY as DRY_PLAN
from gpu_run import GPU as GPU_PLAN
from gpu_run import OUT_MAX_FILES, ROOT, SOURCE_COMMIT, check_out_folder, install_wheels
from gpu_run import Run as GpuRun
from icons_corpus import HELD_OUT

ICONS = ROOT / ".icons"
ARCHIVE = ROOT / ".icons.tgz"  # what travels to the GPU machine
CORPUS = ROOT / "data" / "icons"
WEBP_QUALITY = 90

# One probe per question (training/RECIPE.md has the answers): image size at a similar cost
# (a fourth stage from 96 px up keeps the last map small), width, grouped positives, KoLeo.
COMMON = ("--data", ".icons/train", "--label-depth", "0", "--batch-size", "512", "--lr", "3e-3")
COMMON += ("--epochs", "400")  # a cap: time_budget_s fits the real count
COMMON_SET = ("warmup_epochs=3", "eval_every=10", "evaluate=false")
FOUR_STAGES = ("widths=[32,64,128,256]", "depths=[1,2,2,2]")
PROBES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # name: (flags, --set values)
    "g64": (("--group-by", "name", "--image-size", "64"), ()),
    "g64wide": (("--group-by", "name", "--image-size", "64"), ("widths=[64,128,256]",)),
    "g96": (("--group-by", "name", "--image-size", "96"), FOUR_STAGES),
    "g128": (("--group-by", "name", "--image-size", "128"), FOUR_STAGES),
    "flat64": (("--image-size", "64"), ()),
    "g64koleo": (("--group-by", "name", "--image-size", "64"), ("koleo_weight=0.05",)),
    "g128t01": (("--group-by", "name", "--image-size", "128", "--temperature", "0.1"), FOUR_STAGES),
}
DEFAULT_PROBES = ("g64", "g64wide", "g96", "g128", "flat64", "g64koleo")
MAX_PROBES = OUT_MAX_FILES - 2  # each probe's weights come back, beside the report and the log
DRY_PROBES = ("g64", "flat64")
DRY_FLAGS = ("--device", "cpu", "--batch-size", "32", "--epochs", "1")
DRY_SET = ("widths=[16,32,64]", "depths=[1,1,1]", "max_steps_per_epoch=2")


def prepare(corpus: Path) -> None:
    """`.icons/` from the corpus: WebP, flattened onto white (as the decoder would)."""
    from PIL import Image

    from service.imaging import InputSpec, decode_image

    sources = sorted(corpus.glob("*/*.png"))
    if not sources:
        raise SystemExit(f"no images under {corpus}: run `make icons-corpus` first")

    def convert(src: Path) -> int:
        theme = src.parent.name
        part = "heldout" if theme in HELD_OUT else "train"
        dst = ICONS / part / theme / (src.stem + ".webp")
        data = src.read_bytes()
        with Image.open(io.BytesIO(data)) as im:  # its own size: the decoder only flattens
            spec = InputSpec(channels=3, height=im.height, width=im.width, colour_mode="RGB")
        pixels = decode_image(data, spec)
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(dst, "WEBP", quality=WEBP_QUALITY, method=6)
        return dst.stat().st_size

    shutil.rmtree(ICONS, ignore_errors=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        total = sum(pool.map(convert, sources))
    for part in ("train", "heldout"):
        count = sum(1 for _ in (ICONS / part).glob("*/*.webp"))
        print(f"{ICONS.name}/{part}: {count} images")
    with tarfile.open(ARCHIVE, "w:gz") as tar:
        tar.add(ICONS, arcname=ICONS.name)
    print(f"{len(sources)} images, {total / 2**20:.1f} MiB; {ARCHIVE.name}: ", end="")
    print(f"{ARCHIVE.stat().st_size / 2**20:.1f} MiB, carry=['{ARCHIVE.name}', '.whl']")


def probe_command(
    name: str, work: Path, budget_s: float, dry: bool, extra: tuple[str, ...] = ()
) -> list[str]:
    flags, settings = PROBES[name]
    argv = [sys.executable, "-m", "training", "train", *COMMON, *flags]
    for value in (*COMMON_SET, *settings, *extra, f"time_budget_s={budget_s:.0f}"):
        argv += ["--set", value]
    if dry:
        argv += [*DRY_FLAGS, *(a for v in DRY_SET for a in ("--set", v))]
    else:
        argv += ["--device", "cuda"]
    return [*argv, "--out", str(work / name / "icons")]  # the name model.json carries


def train_probes(run: GpuRun, commands: dict[str, list[str]], budget_s: float) -> dict:
    """Every probe at once, each into its own log; their exit codes."""
    procs = {}
    for name, argv in commands.items():
        run.say(f"$ {' '.join(argv)}")
        log = open(run.work / f"{name}.log", "w")  # noqa: SIM115 - closed below
        procs[name] = (subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log)
    timeout_s = budget_s + 150  # data, CUDA start, whitening and export besides the budget
    deadline = time.monotonic() + timeout_s
    codes = {}
    for name, (proc, log) in procs.items():
        try:
            codes[name] = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[name] = f"killed after {timeout_s:.0f} s"
        log.close()
        run.say(f"--- {name}: exit {codes[name]}")
        run.say((run.work / f"{name}.log").read_text())
    return codes


def cross_style(model_dir: Path) -> dict:
    """The probe's cross-style recall between the held-out pair, through its ONNX graph."""
    from service.imaging import InputSpec
    from training.cross_style import cross_style_metrics, load_pair
    from training.evaluate import onnx_embedder, unit

    info = json.loads((model_dir / "model.json").read_text())
    a, b = (ICONS / "heldout" / theme for theme in HELD_OUT)
    pair = load_pair(a, b, InputSpec.from_dict(info["input"]))
    embed = onnx_embedder(model_dir)
    metrics = cross_style_metrics(unit(embed(pair.a.images)), unit(embed(pair.b.images)), pair)
    return {**metrics, "pair": pair.describe()}


def summarise(run: GpuRun, name: str, code: object, argv: list[str]) -> dict:
    from training.checkpoint import save_without_optimizer

    model_dir = run.work / name / "icons"
    entry: dict = {"exit": code, "command": " ".join(argv[1:])}
    if not (model_dir / "model.json").exists():
        return {**entry, "status": "no artifact"}
    info = json.loads((model_dir / "model.json").read_text())
    training = info["training"]
    entry.update(
        status="ran",
        image_size=info["input"]["height"],
        widths=info["architecture"]["widths"],
        depths=info["architecture"]["depths"],
        epochs=training["epochs"],
        steps=training["steps"],
        train_wall_s=training["wall_time_s"],
        device=training["device"],
    )
    try:
        entry["cross_style"] = cross_style(model_dir)
    except Exception as exc:  # one probe's failure must not cost the others
        entry["cross_style"] = f"failed: {type(exc).__name__}: {exc}"
    save_without_optimizer(model_dir / "weights.safetensors", run.out / f"{name}.safetensors")
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="write .icons/ from the corpus")
    prep.add_argument("--corpus", type=Path, default=CORPUS)
    go = commands.add_parser("run", help="train the probes and measure them")
    go.add_argument("--dry-run", action="store_true", help="two tiny probes on the CPU")
    go.add_argument("--budget-s", type=float, default=200, help="training seconds per probe")
    go.add_argument(
        "--probes",
        default=",".join(DEFAULT_PROBES),
        help=f"comma-separated names from PROBES, at most {MAX_PROBES} (default: %(default)s)",
    )
    go.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="for every probe"
    )
    go.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or ROOT / "bench" / "results" / "gpu_icons"),
    )
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.corpus)
        return 0
    sys.path.insert(0, str(ROOT))  # the service's decoder and training/, imported below
    if not (ICONS / "train").is_dir():
        raise SystemExit(f"no {ICONS}/train: run `python bench/gpu_icons.py prepare` first")
    if SOURCE_COMMIT.is_file() and not os.environ.get("LOOKALIKE_GIT_COMMIT"):
        os.environ["LOOKALIKE_GIT_COMMIT"] = SOURCE_COMMIT.read_text().strip()
    run = GpuRun(DRY_PLAN if args.dry_run else GPU_PLAN, args.out)
    names = DRY_PROBES if args.dry_run else tuple(args.probes.split(","))
    unknown = [name for name in names if name not in PROBES]
    if unknown:
        raise SystemExit(f"unknown probes {unknown}; known: {', '.join(PROBES)}")
    if len(names) > MAX_PROBES:
        raise SystemExit(f"{len(names)} probes: at most {MAX_PROBES} fit what comes back")
    extra = tuple(args.set)
    budget = 20.0 if args.dry_run else args.budget_s
    run.say(f"lookalike icons probes ({run.plan.name}): {', '.join(names)}; {budget:.0f} s each")
    run.step("wheels", lambda: install_wheels(run))
    if run.site:  # pillow_heif, for the decoder that the cross-style step imports here
        sys.path.insert(0, str(run.site))
    commands = {n: probe_command(n, run.work, budget, not run.plan.gpu, extra) for n in names}
    codes: dict = {}
    run.step("train", lambda: codes.update(train_probes(run, commands, budget)))
    run.report["probes"] = {}
    for name in names:
        run.report["probes"][name] = summarise(run, name, codes.get(name), commands[name])
        run.say(f"{name}: {json.dumps(run.report['probes'][name])}")
        run.write_report()
    scored = {
        n: p["cross_style"]["cross_style_r1"]
        for n, p in run.report["probes"].items()
        if isinstance(p.get("cross_style"), dict)
    }
    run.report["best_cross_style_r1"] = max(scored, key=scored.__getitem__) if scored else None
    run.report["out_folder_problems"] = check_out_folder(run)
    run.write_report()
    run.say(f"cross-style R@1: {json.dumps(scored)}; best {run.report['best_cross_style_r1']}")
    run.say(f"wall {run.elapsed():.0f} s; out {args.out}")
    return 0 if len(scored) == len(names) and not run.report["out_folder_problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
