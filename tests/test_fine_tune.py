"""Fine-tuning from a model (`--init`): the parent's architecture and input, its weights at the
first step, a card and model.json that name it and measure it, and the errors a user can meet."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import training.train
from service.imaging import InputSpec
from testkit.images import clip_art_folder
from training.__main__ import build_parser, config_from_args, main
from training.evaluate import evaluate_artifact, parent_embedder, resized
from training.parent import FINE_TUNE_LR, Parent, locate
from training.train import TrainConfig

# Not the defaults, so that taking them from the parent shows.
PARENT_ARCH = ["--set", "widths=[16,32,64]", "--set", "depths=[1,2,1]"]
PARENT_ARCH += ["--set", "projection_dim=32"]


def _main(args: list[str]) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        code = main(args)
    return code, stderr.getvalue()


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch model at 32 px, as `models/icons` would be at 64."""
    images = clip_art_folder(tmp_path_factory.mktemp("parent_images"), 40)
    out = tmp_path_factory.mktemp("models") / "icons"
    args = ["train", "--data", str(images), "--out", str(out), "--epochs", "1"]
    code, stderr = _main([*args, "--image-size", "32", "--batch-size", "16", *PARENT_ARCH])
    assert code == 0, stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The new folder: other drawings, in three labelled subfolders."""
    root = tmp_path_factory.mktemp("photos")
    return clip_art_folder(root, 30, classes=("a", "b", "c"), first_seed=100)


@dataclass
class Child:
    out: Path
    stderr: str
    first_state: dict[str, torch.Tensor]  # the model as the first epoch received it


@pytest.fixture(scope="module")
def child(parent: Path, photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Child:
    out = tmp_path_factory.mktemp("models") / "mine"
    first: dict[str, torch.Tensor] = {}
    real = training.train.train_one_epoch

    def spy(**kwargs):
        if not first:
            first.update({k: v.clone() for k, v in kwargs["model"].state_dict().items()})
        return real(**kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.train, "train_one_epoch", spy)
        args = ["train", "--init", str(parent), "--data", str(photos), "--out", str(out)]
        code, stderr = _main([*args, "--epochs", "1", "--batch-size", "8"])
    assert code == 0, stderr[-2000:]
    return Child(out, stderr, first)


def test_fine_tuning_takes_the_parents_architecture_and_input(parent: Path, child: Child) -> None:
    info = json.loads((child.out / "model.json").read_text())
    theirs = json.loads((parent / "model.json").read_text())
    assert info["architecture"] == theirs["architecture"]  # mean/std included: kept, not refitted
    assert info["architecture"]["widths"] == [16, 32, 64]
    assert info["architecture"]["depths"] == [1, 2, 1]
    assert info["architecture"]["projection_dim"] == 32
    assert (info["input"]["height"], info["input"]["colour_mode"]) == (32, "RGB")  # not 64
    assert info["training"]["epochs"] == 1 and len(info["training"]["commands"]) == 1
    assert "starting from" in child.stderr and "a new run" in child.stderr
    assert info["training"]["config"]["lr"] == FINE_TUNE_LR  # a tenth of a fresh run's


def test_an_explicit_lr_wins_over_the_fine_tuning_default(parent: Path) -> None:
    args = ["train", "--init", str(parent), "--data", "somewhere"]
    assert config_from_args(build_parser().parse_args(args), args).lr == FINE_TUNE_LR
    args += ["--lr", "1e-3"]
    assert config_from_args(build_parser().parse_args(args), args).lr == 1e-3
    assert TrainConfig().lr == 10 * FINE_TUNE_LR


def test_the_first_epoch_starts_from_the_parents_weights(parent: Path, child: Child) -> None:
    weights = load_file(str(parent / "weights.safetensors"))
    parents = {k[len("model.") :]: v for k, v in weights.items() if k.startswith("model.")}
    assert parents.keys() == child.first_state.keys()
    for key, value in parents.items():
        torch.testing.assert_close(child.first_state[key], value, rtol=0, atol=0, msg=key)
    after = load_file(str(child.out / "weights.safetensors"))
    assert not torch.equal(after["model.head.net.0.weight"], weights["model.head.net.0.weight"])
    assert after["optim.0.step"].item() == 3  # a fresh AdamW: 24 training images at batch 8


def test_the_card_names_the_parent_and_measures_it_the_same_way(
    parent: Path, photos: Path, child: Child
) -> None:
    theirs = json.loads((parent / "model.json").read_text())
    info = json.loads((child.out / "model.json").read_text())
    assert info["parent"] == {
        "name": "icons",
        "version": theirs["version"],
        "path": str(parent),
        "data": theirs["training"]["data"]["source"],
    }
    result = json.loads((child.out / "metrics.json").read_text())
    assert result["parent"]["version"] == theirs["version"]
    alone = evaluate_artifact(parent, data=str(photos)).result["metrics"]
    for metric in ("copy_r1", "copy_map", "knn_top1_k200_t0.1"):
        assert result["metrics"][metric]["parent"] == alone[metric]["model"], metric
    card = (child.out / "README.md").read_text()
    assert f"Fine-tuned from `icons` (version `{theirs['version'][:12]}`" in card
    assert "(parent icons " in card  # the headline
    assert any(line.startswith("metric") and "parent" in line for line in card.splitlines())


def test_an_override_the_weights_do_not_fit_is_refused(parent: Path, photos: Path) -> None:
    base = ["train", "--init", str(parent), "--data", str(photos), "--batch-size", "8"]
    code, stderr = _main([*base, "--set", "widths=[8,16,32]", "--set", "colour_mode=L"])
    assert code == 2
    assert (
        "its weights do not fit colour_mode L, widths [8, 16, 32] "
        "(the parent has colour_mode RGB, widths [16, 32, 64])" in stderr
    )
    code, stderr = _main([*base, "--resume"])
    assert code == 2 and "give one of them" in stderr
    code, stderr = _main(["train", "--init", str(photos), "--data", str(photos)])
    assert code == 2 and "no model.json there" in stderr


def test_an_image_size_override_fits_and_the_parent_sees_its_own_size(
    parent: Path, photos: Path
) -> None:
    spec = InputSpec(channels=3, height=16, width=16, colour_mode="RGB")
    cfg = TrainConfig(widths=(16, 32, 64), depths=(1, 2, 1), projection_dim=32, image_size=16)
    assert Parent.open(parent).encoder_for(cfg, spec).image_size == 16
    info = json.loads((parent / "model.json").read_text())
    small = {"parent": Parent.open(parent).record(), "input": spec.to_dict()}
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    embed = parent_embedder(small)
    assert embed is not None and embed(images).shape == (5, info["embedding_dim"])
    assert resized(images, 32, 32).shape == (5, 32, 32, 3)


def test_a_parent_that_moved_or_changed_is_left_out(
    parent: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = Parent.open(parent).record()
    assert locate(record) == parent
    assert locate({**record, "version": "0" * 64}) is None
    assert locate({**record, "path": str(parent / "gone")}) is None
    assert "no longer at" in caplog.text
