"""bench/gpu_run.sh: its dry run end to end on the CPU, and the GPU recipe against the limits
on what comes back from the device."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from safetensors.torch import load_file

from training.__main__ import build_parser, config_from_args
from training.checkpoint import load_checkpoint, read_meta, save_checkpoint
from training.encoder import ContrastiveModel, EncoderConfig
from training.export import export_onnx

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["wheels", "environment", "carried_tree", "cuda_tests", "train_speed", "train"]


def _gpu_run(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # it imports its sibling `report`
    spec = importlib.util.spec_from_file_location("gpu_run", ROOT / "bench" / "gpu_run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_run", module)  # its dataclasses look themselves up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_writes_the_report_the_artifact_and_the_metrics(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_run.sh"), "--dry-run", "--out", str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    steps = {step["name"]: step for step in report["steps"]}
    assert list(steps) == STEPS
    assert report["mode"] == "dry-run" and report["within_wall_limit"]  # ≤ 3 minutes
    assert report["out_folder_problems"] == []
    assert steps["environment"]["status"] == "ran"
    assert steps["environment"]["result"]["torch"]
    assert steps["carried_tree"]["result"]["mib"] <= 64
    # Skipped, never failed, where there is no GPU; the reason is pytest's own.
    assert steps["cuda_tests"]["status"] == "skipped"
    assert "torch sees no CUDA device" in steps["cuda_tests"]["why"]
    speed = steps["train_speed"]
    if speed["status"] == "skipped":  # a fresh clone: neither .whl nor .venv-bench
        assert "no python here imports lightly" in speed["why"]
    else:
        assert speed["status"] == "ran" and speed["result"]["ours_vs_fastest_lightly"] > 0

    train = steps["train"]
    assert train["status"] == "ran", train.get("why")
    assert train["result"]["knn_curve"][0][0] == 1
    assert "not comparable" in report["verdict"]
    for name in ("log.txt", "encoder.onnx", "model.json", "README.md", "knn.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]["knn_top1_k200_t0.1"]
    assert 0 < metrics["model"] <= 1 and metrics["model"] == train["result"]["knn_top1_k200_t0.1"]
    weights = out / "weights.safetensors"
    assert not [key for key in load_file(str(weights)) if key.startswith("optim.")]
    model = ContrastiveModel(EncoderConfig.from_dict(read_meta(weights)["encoder"]))
    load_checkpoint(weights, model)  # loads, for fine-tuning or `python -m training export`
    assert "Trained on the CPU" in (out / "README.md").read_text()


def test_the_gpu_recipe_fits_what_comes_back_from_the_device(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gpu_run = _gpu_run(monkeypatch)
    argv = ["train", *gpu_run.RECIPE]
    cfg = config_from_args(build_parser().parse_args(argv), argv)
    model = ContrastiveModel(
        EncoderConfig(widths=cfg.widths, depths=cfg.depths, pool_grid=cfg.pool_grid)
    )
    save_checkpoint(tmp_path / "weights.safetensors", model, None, {"encoder": "…"})
    export_onnx(model.eval(), tmp_path / "encoder.onnx")
    for name in ("weights.safetensors", "encoder.onnx"):
        assert (tmp_path / name).stat().st_size <= gpu_run.OUT_MAX_BYTES, name
    # At most 8 files come back, report.json and log.txt among them.
    assert len(gpu_run.ARTIFACT_FILES + gpu_run.CARD_FILES) + 2 <= gpu_run.OUT_MAX_FILES
