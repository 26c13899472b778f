"""The steps of one prepared GPU run; `bash bench/gpu_run.sh` starts it and documents it.

    bash bench/gpu_run.sh [--dry-run] [--out DIR]

Each step runs in turn, also after an earlier one failed (device time is too scarce to stop
at the first failure), and its outcome goes into DIR/report.json: `ran`, `skipped` (and why)
or `failed` (and why), with its seconds. Exit status 1 when any step failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from report import machine, table

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / ".whl"  # lightly's and pillow-heif's wheels (bench/gpu_prepare.sh), carried
DATASET = ROOT / ".fashion-mnist"  # Fashion-MNIST's four .gz files, carried likewise
SOURCE_COMMIT = WHEELS / "SOURCE_COMMIT"  # the commit gpu_prepare.sh saw (the copy has no .git)
BENCH_VENV_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
SHIPPED_METRICS = ROOT / "models" / "fashion-mnist" / "metrics.json"
MONITOR = "knn_top1_k200_t0.1"
CARRY_LIMIT_MIB = 64  # what travels to the device machine: the tree, shared/ and carried paths
OUT_MAX_FILES, OUT_MAX_BYTES = 8, 16 * 2**20  # what comes back from $OUT
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
# The artifact files copied to the output folder; weights lose their optimiser state on the way.
ARTIFACT_FILES = ("encoder.onnx", "weights.safetensors", "model.json", "metrics.json")
CARD_FILES = ("README.md", "knn.png")

# The Fashion-MNIST recipe scaled for a GPU (training/RECIPE.md says why each knob moved).
# The epoch count is a cap: `time_budget_s`, set from the time left, fits the real one.
RECIPE = [
    *("--data", "fashion-mnist", "--loss", "ntxent", "--temperature", "0.2"),
    *("--batch-size", "1024", "--lr", "4e-3", "--epochs", "400"),
    *("--set", "widths=[64,128,256]", "--set", "depths=[2,2,2]"),
    *("--set", "warmup_epochs=5", "--set", "eval_every=10"),
]


@dataclasses.dataclass(frozen=True)
class Plan:
    """The sizes of one mode: the real run on the GPU, or the dry run on the CPU."""

    name: str
    wall_s: float  # the whole run must end within this
    cuda_tests_timeout_s: float
    train_speed_args: tuple[str, ...]
    train_speed_timeout_s: float
    recipe_overrides: tuple[str, ...]  # appended to RECIPE (later flags win)
    train_start_s: float  # starting the training process: imports, data, CUDA context
    finish_s: float  # after the epochs: whitening, ONNX export, evaluation, card
    overrun_s: float  # past wall_s, training is killed (the device tool stops at 600 s)

    @property
    def gpu(self) -> bool:
        return self.name == "gpu"


GPU = Plan(
    name="gpu",
    wall_s=480,
    cuda_tests_timeout_s=150,
    # lightly's DataLoader gets every core; the same backbone and batch for both pipelines.
    train_speed_args=(
        *("--device", "cuda", "--workers", str(os.cpu_count() or 1), "--batch-size", "1024"),
        *("--widths", "48,96,192", "--warmup", "5", "--steps", "50"),
        *("--epochs", "10", "--budget-min", "0.5", "--thresholds", "0.86,0.87"),
    ),
    train_speed_timeout_s=170,
    recipe_overrides=("--device", "cuda"),
    train_start_s=20,
    finish_s=90,
    overrun_s=80,
)
DRY = Plan(
    name="dry-run",
    wall_s=180,
    cuda_tests_timeout_s=60,
    train_speed_args=(
        *("--device", "cpu", "--workers", "0", "--batch-size", "64", "--limit", "512"),
        *("--widths", "16,32,64", "--warmup", "1", "--steps", "2", "--epochs", "1"),
    ),
    train_speed_timeout_s=90,
    recipe_overrides=(
        *("--device", "cpu", "--limit", "512", "--batch-size", "64", "--epochs", "3"),
        *("--set", "widths=[16,32,64]", "--set", "depths=[1,1,1]", "--set", "eval_every=2"),
        *("--set", "warmup_epochs=2"),
    ),
    train_start_s=10,
    finish_s=60,
    overrun_s=60,
)


class Skip(Exception):
    """A step that did not apply here; the message says why."""


class StepFailed(Exception):
    """A step that ran and failed; the message says how."""


class Run:
    """The output folder, the log that mirrors the console, the clock and the report."""

    def __init__(self, plan: Plan, out: Path) -> None:
        self.plan, self.out = plan, out
        self.start = time.monotonic()
        self.work = Path(tempfile.mkdtemp(prefix="lookalike-gpu-run-"))
        out.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "log.txt", "w")  # noqa: SIM115 - open for the whole run
        self.report: dict = {"mode": plan.name, "steps": []}
        self.site: Path | None = None  # where the carried wheels were installed

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def command(self, argv: list[str], *, timeout_s: float, env: dict | None = None) -> None:
        """Run argv from the repository root, its output into the console and the log. A
        non-zero exit or a time-out raises StepFailed, quoting the output's last lines."""
        self.say("$ " + " ".join(argv))
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # so a time-out ends its children too (DataLoader workers)
        )
        timer = threading.Timer(timeout_s, os.killpg, (proc.pid, signal.SIGKILL))
        timer.start()
        tail: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.say(line.rstrip("\n"))
                tail = [*tail[-4:], line.strip()] if line.strip() else tail
            code = proc.wait()
        finally:
            timer.cancel()
        if code != 0:
            how = f"killed after {timeout_s:.0f} s" if code == -signal.SIGKILL else f"exit {code}"
            raise StepFailed(f"{how}: " + " | ".join(tail))

    def step(self, name: str, action: Callable[[], dict]) -> None:
        self.say(f"\n=== {name} ({self.elapsed():.0f} s into the run)")
        started = time.monotonic()
        entry: dict = {"name": name}
        try:
            entry["result"] = action()
            entry["status"] = "ran"
        except Skip as why:
            entry.update(status="skipped", why=str(why))
        except Exception as exc:  # a failed step must not cost the steps after it
            entry.update(status="failed", why=f"{type(exc).__name__}: {exc}")
        entry["seconds"] = round(time.monotonic() - started, 1)
        self.report["steps"].append(entry)
        why = f" ({entry['why']})" if "why" in entry else ""
        self.say(f"=== {name}: {entry['status']}{why}")
        self.write_report()

    def write_report(self) -> None:
        self.report["wall_s"] = round(self.elapsed(), 1)
        (self.out / "report.json").write_text(json.dumps(self.report, indent=2) + "\n")


def environment(run: Run) -> dict:
    """The machine, the libraries, and what torch and nvidia-smi say about the GPU."""
    import importlib.metadata

    import torch

    from training.export import git_commit

    info: dict = {
        **machine(),
        "versions": {
            name: importlib.metadata.version(name)
            for name in ("onnx", "onnxscript", "onnxruntime", "safetensors", "scikit-learn")
        },
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cuda_available": torch.cuda.is_available(),
        "dataset": os.environ.get("LOOKALIKE_FASHION_MNIST_DIR", "(the default search)"),
        "git_commit": git_commit(),
        "shm_free_gib": round(shutil.disk_usage("/dev/shm").free / 2**30, 1)
        if Path("/dev/shm").exists()
        else None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
        }
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit"
        info["nvidia_smi"] = subprocess.run(
            [smi, query, "--format=csv"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        run.say(subprocess.run([smi], capture_output=True, text=True, timeout=30).stdout)
    else:
        info["nvidia_smi"] = "not found"
    if run.plan.gpu and not torch.cuda.is_available():
        raise StepFailed("torch sees no CUDA device on the GPU run")
    return info


def fits_this_python(wheel: Path) -> bool:
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:  # the device's python may lack it; pip always carries a copy
        from pip._vendor.packaging.tags import sys_tags
        from pip._vendor.packaging.utils import parse_wheel_filename

    return not parse_wheel_filename(wheel.name)[3].isdisjoint(sys_tags())


def install_wheels(run: Run) -> dict:
    """Install the carried wheels that fit this Python: all of them on the device (3.12); on a
    dry run elsewhere, the pure-Python ones (the venv has the rest)."""
    wheels = [w for w in sorted(WHEELS.glob("*.whl")) if fits_this_python(w)]
    if not wheels:
        raise Skip(f"no wheels for this python in {WHEELS.name}/ (bench/gpu_prepare.sh)")
    target = run.work / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    pip += ["--no-compile", "--no-cache-dir", "--upgrade", "--target", str(target)]
    run.command([*pip, *map(str, wheels)], timeout_s=120)
    run.site = target
    # Every later step imports the service's decoder, which needs pillow_heif from here.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), str(target), os.environ.get("PYTHONPATH")])
    )
    return {"wheels": [w.name for w in wheels], "target": str(target)}


def lightly_python(run: Run) -> tuple[str, dict]:
    """An interpreter that imports what bench/train_speed.py needs of lightly: this one with
    the carried wheels, else the .venv-bench that `make bench-venv` builds."""
    candidates, tried = [], []
    if run.site:
        candidates.append(("this python + .whl", sys.executable, f"{ROOT}:{run.site}"))
    else:
        tried.append(f"no wheels in {WHEELS.name}/ (bench/gpu_prepare.sh)")
    if BENCH_VENV_PYTHON.exists():
        candidates.append((".venv-bench", str(BENCH_VENV_PYTHON), str(ROOT)))
    else:
        tried.append(".venv-bench missing (make bench-venv)")
    for label, python, path in candidates:
        env = {"PYTHONPATH": path}
        done = subprocess.run(
            [python, "-c", "import lightly.loss, lightly.transforms"],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            return python, env
        tried.append(f"{label}: {done.stderr.strip().splitlines()[-1]}")
    raise Skip("no python here imports lightly: " + "; ".join(tried))


def require_dataset() -> None:
    """Fail at once where Fashion-MNIST is missing: with no network, a download only hangs."""
    from service.fashion_mnist import find_fashion_mnist

    try:
        find_fashion_mnist(download=False)
    except FileNotFoundError as exc:
        raise StepFailed(f"{exc} (bench/gpu_prepare.sh fills {DATASET.name}/ to carry)") from exc


def cuda_tests(run: Run) -> dict:
    require_dataset()
    junit = run.work / "cuda-tests.xml"
    run.command(
        [
            *(sys.executable, "-m", "pytest", "--noconftest", "-m", "cuda", "-q"),
            *("-p", "no:cacheprovider", f"--junitxml={junit}", "tests/test_cuda.py"),
        ],
        timeout_s=run.plan.cuda_tests_timeout_s,
    )
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    reasons = sorted({s.get("message", "") for s in suite.iter("skipped")})
    if counts["skipped"] == counts["tests"] and not run.plan.gpu:
        raise Skip(f"all {counts['tests']} skipped by pytest: " + "; ".join(reasons))
    if counts["skipped"]:
        raise StepFailed(f"{counts['skipped']} of {counts['tests']} skipped on the GPU run")
    return counts


def train_speed(run: Run) -> dict:
    try:
        python, env = lightly_python(run)
    except Skip as why:  # on the GPU run lightly must be there: .whl was not prepared
        if run.plan.gpu:
            raise StepFailed(str(why)) from None
        raise
    require_dataset()
    results = run.work / "train_speed"
    run.command(
        [python, "bench/train_speed.py", *run.plan.train_speed_args, "--results", str(results)],
        timeout_s=run.plan.train_speed_timeout_s,
        env=env,
    )
    found = json.loads((results / "train_speed.json").read_text())
    rates = {row["pipeline"]: row["images_per_s"] for row in found["throughput"]}
    best_lightly = max(v for k, v in rates.items() if k.startswith("lightly"))
    return {
        "python": python,
        "ours_vs_fastest_lightly": round(rates["ours"] / best_lightly, 2),
        "goal": "ours ≥ 1.5 × lightly's images/s",
        **{k: found[k] for k in ("device", "config", "throughput", "time_to_accuracy")},
    }


def train(run: Run) -> dict:
    """The scaled recipe for the time left; the artifact, metrics and kNN curve into the out
    folder, and whether it beats the shipped model under the same protocol."""
    plan = run.plan
    require_dataset()
    # Whatever the earlier steps left; at least 10 s, so a slow machine still trains a little.
    budget = max(10.0, plan.wall_s - run.elapsed() - plan.train_start_s - plan.finish_s)
    model_dir = run.work / "fashion-mnist"  # the name the card and model.json carry
    argv = [sys.executable, "-m", "training", "train", *RECIPE, *plan.recipe_overrides]
    argv += ["--set", f"time_budget_s={budget:.0f}", "--out", str(model_dir)]
    try:
        run.command(argv, timeout_s=max(60.0, plan.wall_s + plan.overrun_s - run.elapsed()))
    finally:
        copied = collect_artifact(model_dir, run.out)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    info = json.loads((model_dir / "model.json").read_text())
    log = [json.loads(line) for line in (model_dir / "train_log.jsonl").read_text().splitlines()]
    new = metrics["metrics"][MONITOR]["model"]
    shipped = json.loads(SHIPPED_METRICS.read_text())["metrics"][MONITOR]["model"]
    result = {
        "command": info["training"]["commands"][-1],
        "device": info["training"]["device"],
        "epochs": info["training"]["epochs"],
        "steps": info["training"]["steps"],
        "time_budget_s": round(budget),
        "train_wall_s": info["training"]["wall_time_s"],
        "knn_curve": [[e["epoch"], e[MONITOR]] for e in log if MONITOR in e],
        MONITOR: new,
        "shipped_" + MONITOR: shipped,
        "beats_shipped": new > shipped,
        "protocol": metrics["metrics"][MONITOR]["protocol"],
        "images": {"train": metrics["train_images"], "test": metrics["heldout_images"]},
        "files": copied,
    }
    run.report["verdict"] = verdict(plan, new, shipped)
    return result


def verdict(plan: Plan, new: float, shipped: float) -> str:
    numbers = f"kNN top-1 (k=200, T=0.1) {new:.4f} against the shipped model's {shipped:.4f}"
    if not plan.gpu:
        return f"dry run, a tiny model on 512 images: {numbers}; not comparable, nothing to ship"
    if new > shipped:
        return (
            f"BEATS the shipped model: {numbers}, same protocol (Fashion-MNIST test vs train). "
            "Ship it: copy weights.safetensors into models/fashion-mnist/, then "
            "`python -m training export --model models/fashion-mnist` (see bench/gpu_run.sh)"
        )
    return f"does NOT beat the shipped model: {numbers}, same protocol; keep the shipped model"


def collect_artifact(model_dir: Path, out: Path) -> list[str]:
    """Copy what the run made into the out folder: optimiser state dropped from the weights."""
    from training.checkpoint import save_without_optimizer

    copied = []
    for name in (*ARTIFACT_FILES, *CARD_FILES):
        src = model_dir / name
        if not src.exists():
            continue
        if name == "weights.safetensors":
            save_without_optimizer(src, out / name)
        else:
            shutil.copyfile(src, out / name)
        copied.append(name)
    return copied


def carried_tree(run: Run) -> dict:
    """What a `run` call sends: tracked and untracked-not-ignored files (shared/ among them
    where the checkout has one), plus the carried folders. Without git (the device's copy),
    every file here travelled."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode == 0:
        names = [n for n in listed.stdout.decode().split("\0") if n]
        tree = [ROOT / n for n in names if (ROOT / n).is_file()]
    else:
        tree = [p for p in ROOT.rglob("*") if p.is_file() and WHEELS not in p.parents]
        tree = [p for p in tree if DATASET not in p.parents]
    mib = lambda paths: sum(p.stat().st_size for p in paths) / 2**20  # noqa: E731
    carried = {d.name: mib(p for p in d.rglob("*") if p.is_file()) for d in (WHEELS, DATASET)}
    absent = [d.name for d in (WHEELS, DATASET) if not d.is_dir()]
    total = mib(tree) + sum(carried.values())
    largest = sorted(tree, key=lambda p: p.stat().st_size, reverse=True)[:3]
    result = {
        "mib": round(total, 1),
        "limit_mib": CARRY_LIMIT_MIB,
        "tree_mib": round(mib(tree), 1),
        "tree_files": len(tree),
        "carried_mib": {name: round(size, 1) for name, size in carried.items()},
        "carried_absent": [f"{name}/ (bench/gpu_prepare.sh makes it)" for name in absent],
        "largest": {str(p.relative_to(ROOT)): round(mib([p]), 1) for p in largest},
    }
    if total > CARRY_LIMIT_MIB:
        raise StepFailed(f"{total:.1f} MiB would travel, over the {CARRY_LIMIT_MIB} MiB limit")
    return result


def check_out_folder(run: Run) -> list[str]:
    """The limits on what comes back from $OUT; return the problems."""
    files = [p for p in run.out.rglob("*") if p.is_file()]
    problems = [f"{len(files)} files (at most {OUT_MAX_FILES})"] * (len(files) > OUT_MAX_FILES)
    problems += [f"{p.name} is over 16 MiB" for p in files if p.stat().st_size > OUT_MAX_BYTES]
    problems += [f"{p.name}: odd characters" for p in files if not OUT_NAME.match(p.name)]
    return problems


def prepare_environment() -> None:
    """Point the data search at the carried copy, and the artifact at the carried commit."""
    if DATASET.is_dir() and not os.environ.get("LOOKALIKE_FASHION_MNIST_DIR"):
        os.environ["LOOKALIKE_FASHION_MNIST_DIR"] = str(DATASET)
    if SOURCE_COMMIT.is_file() and not os.environ.get("LOOKALIKE_GIT_COMMIT"):
        os.environ["LOOKALIKE_GIT_COMMIT"] = SOURCE_COMMIT.read_text().strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or ROOT / "bench" / "results" / "gpu_run"),
        help="where report.json, log.txt and the artifact go (default $OUT, else "
        "bench/results/gpu_run)",
    )
    parser.add_argument(
        "--wall-s",
        type=float,
        default=None,
        help="end the whole run within this many seconds (default: the mode's, 480 on the "
        "GPU); training gets what the earlier steps leave",
    )
    args = parser.parse_args()
    plan = DRY if args.dry_run else GPU
    if args.wall_s:
        plan = dataclasses.replace(plan, wall_s=args.wall_s)
    for name in ("report.json", "log.txt", *ARTIFACT_FILES, *CARD_FILES):
        (args.out / name).unlink(missing_ok=True)
    prepare_environment()
    run = Run(plan, args.out)
    run.report["plan"] = {**dataclasses.asdict(plan), "recipe": RECIPE}
    run.say(f"lookalike GPU run, mode {plan.name}: ≤ {plan.wall_s:.0f} s, out {args.out}")
    run.step("wheels", lambda: install_wheels(run))  # first: the steps after import pillow_heif
    if run.site:
        sys.path.insert(0, str(run.site))  # for this process too (environment's imports)
    run.step("environment", lambda: environment(run))
    run.step("carried_tree", lambda: carried_tree(run))
    run.step("cuda_tests", lambda: cuda_tests(run))
    run.step("train_speed", lambda: train_speed(run))
    run.step("train", lambda: train(run))
    run.report["within_wall_limit"] = run.elapsed() <= plan.wall_s
    run.report["out_folder_problems"] = check_out_folder(run)
    run.write_report()
    rows = [
        {"step": s["name"], "status": s["status"], "s": f"{s['seconds']:.1f}", "why": s.get("why")}
        for s in run.report["steps"]
    ]
    run.say("\n" + table(rows, [("step", "step"), ("status", "status"), ("s", "seconds")]))
    for row in rows:
        if row["why"]:
            run.say(f"{row['step']} {row['status']}: {row['why']}")
    run.say(f"carried tree: {carried_summary(run.report)}")
    run.say(f"verdict: {run.report.get('verdict', 'no model was trained')}")
    run.say(f"wall: {run.report['wall_s']:.0f} s of ≤ {plan.wall_s:.0f} s; out: {args.out}")
    for problem in run.report["out_folder_problems"]:
        run.say(f"out folder: {problem}")
    shutil.rmtree(run.work, ignore_errors=True)
    failed = any(s["status"] == "failed" for s in run.report["steps"])
    return 1 if failed or run.report["out_folder_problems"] else 0


def carried_summary(report: dict) -> str:
    step = next(s for s in report["steps"] if s["name"] == "carried_tree")
    if "result" not in step:
        return step.get("why", "not measured")
    r = step["result"]
    carried = ", ".join(f"{name} {mib}" for name, mib in r["carried_mib"].items())
    absent = f"; absent: {', '.join(r['carried_absent'])}" if r["carried_absent"] else ""
    return f"{r['mib']} MiB of ≤ {r['limit_mib']} (tree {r['tree_mib']}, {carried}{absent})"


if __name__ == "__main__":
    sys.exit(main())
