"""Training end to end on a tiny subset: a complete artifact, resume, export parity, CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.__main__ import main
from training.augment import AugmentConfig, TwoViews, ViewTransform
from training.encoder import ContrastiveModel, EncoderConfig
from training.train import TrainConfig, epochs_within_budget, lr_at, override

ARTIFACT_FILES = (
    "encoder.onnx",
    "weights.safetensors",
    "model.json",
    "metrics.json",
    "README.md",
    "loss.png",
    "knn.png",
    "embedding_map.png",
    "neighbours.png",
    "copy_r1.png",
)


def _smoke_args(out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        "fashion-mnist",
        "--limit",
        "64",
        "--batch-size",
        "32",
        "--epochs",
        "1",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def smoke_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "model"
    assert main(_smoke_args(out)) == 0
    return out


def test_smoke_run_of_two_steps_writes_a_complete_artifact(smoke_artifact: Path) -> None:
    for name in ARTIFACT_FILES:
        assert (smoke_artifact / name).is_file(), name
    info = json.loads((smoke_artifact / "model.json").read_text())
    assert info["training"]["steps"] == 2
    assert info["input"] == {
        "channels": 1,
        "height": 28,
        "width": 28,
        "colour_mode": "L",
        "resize": "stretch",
        "dtype": "float32",
        "layout": "NCHW",
        "value_range": [0, 1],
        "name": "images",
    }
    assert info["embedding_dim"] == EncoderConfig().embedding_dim
    assert len(info["version"]) == 64
    assert info["loss"] == {
        "name": "ntxent",
        "temperature": TrainConfig().temperature,
        "koleo_weight": 0.0,
    }
    assert info["training"]["grouping"] is None
    assert info["training"]["commands"][0].startswith(
        "python -m training train --data fashion-mnist"
    )
    metrics = json.loads((smoke_artifact / "metrics.json").read_text())["metrics"]
    row = metrics["knn_top1_k200_t0.1"]
    assert 0.1 < row["model"] <= 1 and 0.1 < row["raw_pixels"] <= 1 and "k=200" in row["protocol"]
    assert info["training"]["runtime"]["accelerator"] == "CPU"
    card = (smoke_artifact / "README.md").read_text()
    assert "python -m training train" in card and "knn_top1_k200_t0.1" in card
    assert "Copy detection R@1" in card and 0 <= metrics["copy_r1"]["random_init"] <= 1
    assert "Trained on the CPU: 1× CPU" in card and "wall time" in card
    assert info["precision"]["graph"] == "int8"  # training/quantize.py kept the int8 graph
    assert info["precision"]["int8_fidelity"]["mean_cosine"] >= 0.98
    assert "Graph: int8 (static quantization" in card


def test_resume_continues_from_the_next_epoch(
    smoke_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "weights.safetensors").write_bytes((smoke_artifact / "weights.safetensors").read_bytes())
    assert main(_smoke_args(out, "--epochs", "2", "--resume")) == 0
    assert "resuming from" in capsys.readouterr().err
    info = json.loads((out / "model.json").read_text())
    assert info["training"]["epochs"] == 2 and info["training"]["steps"] == 4
    assert len(info["training"]["commands"]) == 2 and "--resume" in info["training"]["commands"][1]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [2]


def test_a_time_budget_fits_the_epoch_count(tmp_path: Path) -> None:
    out = tmp_path / "budget"
    assert main(_smoke_args(out, "--epochs", "5", "--set", "time_budget_s=0.01")) == 0
    info = json.loads((out / "model.json").read_text())
    assert info["training"]["epochs"] == 1 and info["training"]["config"]["epochs"] == 1
    assert "fitted to a 0.01 s time budget" in (out / "README.md").read_text()


def test_epochs_within_budget_projects_from_the_last_epoch() -> None:
    cfg = TrainConfig(epochs=100, time_budget_s=100.0, eval_every=2)
    # 10 s gone; an epoch trains in 6 s and the 4 s monitor comes every other one: 8 s each.
    assert epochs_within_budget(cfg, epoch=1, elapsed_s=10, epoch_s=6, monitor_s=4) == 12
    assert epochs_within_budget(cfg, epoch=3, elapsed_s=150, epoch_s=6, monitor_s=4) == 3
    roomy = override(cfg, "time_budget_s", "1e6")
    assert epochs_within_budget(roomy, epoch=1, elapsed_s=10, epoch_s=6, monitor_s=4) == 100


def test_a_slow_first_epoch_is_not_locked_in_by_the_budget() -> None:
    # Epoch 1 is slow (CUDA's start): the fit shrinks the count to 12. Epoch 2 runs at full
    # speed, and fitting again against the run's cap (not the shrunk 12) grows it back.
    cfg = TrainConfig(epochs=100, time_budget_s=100.0, eval_every=1000)
    first = epochs_within_budget(cfg, epoch=1, elapsed_s=8, epoch_s=8, monitor_s=0)
    assert first == 12
    shrunk = override(cfg, "epochs", str(first))
    again = epochs_within_budget(shrunk, epoch=2, elapsed_s=9, epoch_s=1, monitor_s=0, cap=100)
    assert again == 93


def test_triplet_smoke_run_with_koleo_writes_an_artifact(tmp_path: Path) -> None:
    out = tmp_path / "triplet"
    koleo = ("--set", "koleo_weight=0.05")
    float32 = ("--set", "int8=false")
    assert (
        main(_smoke_args(out, "--loss", "triplet", "--mining", "batch_hard", *koleo, *float32)) == 0
    )
    info = json.loads((out / "model.json").read_text())
    assert info["precision"] == {"graph": "float32"}
    assert "Graph: float32." in (out / "README.md").read_text()
    assert_onnx_matches_torch(out, atol=1e-4)
    assert info["loss"] == {
        "name": "triplet",
        "margin": 0.2,
        "mining": "batch_hard",
        "koleo_weight": 0.05,
    }
    assert (out / "encoder.onnx").stat().st_size > 0


def test_artifact_runs_in_onnxruntime_without_torch(smoke_artifact: Path) -> None:
    script = f"""
import json, sys
import numpy as np, onnxruntime as ort
info = json.load(open({str(smoke_artifact / "model.json")!r}))
session = ort.InferenceSession({str(smoke_artifact / "encoder.onnx")!r})
spec = info["input"]
shape = (5, spec["channels"], spec["height"], spec["width"])
x = np.random.default_rng(0).random(shape, dtype=np.float32)
(h,) = session.run(None, {{"images": x}})
assert h.shape == (5, info["embedding_dim"]), h.shape
assert np.allclose(np.linalg.norm(h, axis=1), 1, atol=1e-5)
assert "torch" not in sys.modules
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def onnx_and_torch_vectors(artifact: Path) -> tuple[np.ndarray, np.ndarray]:
    """The artifact's ONNX graph and its torch weights, on 64 real images."""
    import onnxruntime as ort

    from training.checkpoint import load_checkpoint, read_meta
    from training.data import load_fashion_mnist

    weights = artifact / "weights.safetensors"
    model = ContrastiveModel(EncoderConfig.from_dict(read_meta(weights)["encoder"]))
    load_checkpoint(weights, model)
    model.eval()
    x = torch.from_numpy(load_fashion_mnist("test").images[:64]).permute(0, 3, 1, 2).float() / 255
    session = ort.InferenceSession(str(artifact / "encoder.onnx"))
    (onnx_h,) = session.run(None, {"images": x.numpy()})
    return onnx_h, model.embed(x).numpy()


def assert_onnx_matches_torch(artifact: Path, atol: float) -> None:
    np.testing.assert_allclose(*onnx_and_torch_vectors(artifact), atol=atol)


def test_the_int8_graph_follows_torch_on_real_images(smoke_artifact: Path) -> None:
    onnx_h, torch_h = onnx_and_torch_vectors(smoke_artifact)
    cosines = np.sum(onnx_h * torch_h, axis=1)
    assert cosines.mean() >= 0.98 and cosines.min() >= 0.95, cosines


def test_two_views_draw_parameters_per_sample_and_stay_in_range() -> None:
    x = torch.rand(1, 3, 64, 64).repeat(16, 1, 1, 1)  # the same image 16 times
    cfg = AugmentConfig.for_images(channels=3, size=64)
    x0, x1 = TwoViews(cfg)(x, torch.Generator().manual_seed(0))
    assert x0.shape == x1.shape == x.shape
    assert x0.min() >= 0 and x0.max() <= 1
    per_sample = x0.flatten(1)
    assert (per_sample[1:] - per_sample[:1]).abs().amax(1).min() > 0  # no two views alike
    assert not torch.equal(x0, x1)


def test_identity_augmentation_returns_the_input() -> None:
    cfg = AugmentConfig(
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        flip_p=0.0,
        jitter_p=0.0,
        erase_p=0.0,
        grayscale_p=0.0,
    )
    x = torch.rand(4, 1, 28, 28)
    y = ViewTransform(cfg)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_warmup_then_cosine_schedule() -> None:
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(99, 100, 10, 1.0) < 0.01


def test_config_override_refuses_unknown_keys_and_wrong_types() -> None:
    cfg = override(TrainConfig(), "widths", "[16, 32]")
    assert cfg.widths == (16, 32)
    assert override(cfg, "lr", "1").lr == 1.0
    assert override(cfg, "data", "123").data == "123"
    with pytest.raises(ValueError, match="unknown setting"):
        override(cfg, "learning_rate", "0.1")
    with pytest.raises(ValueError, match="epochs expects int"):
        override(cfg, "epochs", "ten")


def test_cli_reports_a_bad_setting_as_an_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--loss", "contrastive"]) == 2
    assert "invalid value for loss" in capsys.readouterr().err


def test_encoder_config_round_trips_and_rejects_unknown_keys() -> None:
    cfg = EncoderConfig(widths=(8, 16), depths=(1, 2), pool_grid=1, whiten_dim=0)
    assert EncoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        EncoderConfig.from_dict({**cfg.to_dict(), "dropout": 0.1})
    with pytest.raises(ValueError, match="pool_grid"):
        EncoderConfig(pool_grid=3)


@pytest.mark.slow
def test_torchrun_ddp_on_two_cpu_ranks_writes_an_artifact(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    # torchrun through this interpreter: its script need not be on PATH (a venv not activated).
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    # A time budget makes rank 0 fit the epoch count and broadcast it to rank 1.
    command += ["-m", "training", *_smoke_args(out), "--device", "cpu"]
    command += ["--set", "time_budget_s=1000"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((out / "model.json").read_text())
    assert info["training"]["device"].startswith("2× CPU")
    assert info["training"]["steps"] == 2  # 64 images, global batch 32


def test_whitening_decorrelates_features_without_labels() -> None:
    cfg = EncoderConfig(widths=(4, 8, 16), depths=(1, 1, 1), whiten_dim=8, whiten_power=1.0)
    model = ContrastiveModel(cfg)
    mixing = torch.randn(
        cfg.backbone_dim, cfg.backbone_dim, generator=torch.Generator().manual_seed(0)
    )
    h = torch.randn(5000, cfg.backbone_dim, generator=torch.Generator().manual_seed(1)) @ mixing
    model.fit_whitening(h)
    z = (h - model.whiten_mean) @ model.whiten_matrix  # (N, 8) before the final normalisation
    torch.testing.assert_close(torch.cov(z.T), torch.eye(8), atol=0.05, rtol=0)
    assert model.embed(torch.rand(3, 1, 28, 28)).shape == (3, 8)


def test_export_command_rebuilds_the_artifact_from_weights_without_optimiser_state(
    smoke_artifact: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from training.checkpoint import save_without_optimizer

    out = tmp_path / "again"
    out.mkdir()
    full = smoke_artifact / "weights.safetensors"
    save_without_optimizer(full, out / "weights.safetensors")  # what a GPU run brings back
    assert not [k for k in load_file(str(out / "weights.safetensors")) if k.startswith("optim.")]
    assert (out / "weights.safetensors").stat().st_size < full.stat().st_size / 2
    assert main(["export", "--model", str(out)]) == 0
    before = json.loads((smoke_artifact / "model.json").read_text())
    after = json.loads((out / "model.json").read_text())
    assert after["version"] == before["version"]  # same weights and whitening → same graph
    assert (out / "metrics.json").is_file() and (out / "README.md").is_file()


def test_a_non_finite_loss_aborts_naming_the_step() -> None:
    from training.data import Dataset
    from training.train import Distributed, train_one_epoch

    class NaNLoss(torch.nn.Module):
        def forward(self, z0: torch.Tensor, z1: torch.Tensor, groups: None) -> torch.Tensor:
            return (z0 * float("nan")).sum()

    model = ContrastiveModel(EncoderConfig(widths=(4, 8, 16), depths=(1, 1, 1), whiten_dim=0))
    images = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
    cfg = TrainConfig(batch_size=8, epochs=1)
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 0"):
        train_one_epoch(
            model=model,
            loss_fn=NaNLoss(),
            optimizer=torch.optim.AdamW(model.parameters()),
            views=TwoViews(AugmentConfig()),
            data=Dataset(images, None),
            epoch=1,
            step=0,
            total_steps=2,
            cfg=cfg,
            env=Distributed(torch.device("cpu")),
            gen=torch.Generator().manual_seed(0),
        )
