"""Label-free evaluation on the user's own folder: held-out split, seeded edits, copy-detection
metrics, the folder run's output and card, and `python -m training evaluate --data`."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from service.edits import strong_edit
from service.imaging import InputSpec
from testkit.images import clip_art, clip_art_folder
from training.__main__ import main
from training.copy_detection import CopyDetectionSet, copy_detection_metrics
from training.data import holdout_count, load_data, load_image_folder

RGB32 = InputSpec(channels=3, height=32, width=32, colour_mode="RGB")


def test_an_edit_is_strong_seeded_and_keeps_the_shape() -> None:
    image = np.asarray(clip_art(0).convert("RGB").resize((32, 32)))
    edited, how = strong_edit(image, np.random.default_rng([0, 7]))
    again, _ = strong_edit(image, np.random.default_rng([0, 7]))
    assert edited.shape == image.shape and edited.dtype == np.uint8
    assert np.array_equal(edited, again)
    assert np.abs(edited.astype(int) - image).mean() > 5
    assert how.startswith("crop") and "JPEG q" in how and ("border" in how or "text" in how)
    gray, _ = strong_edit(image[:, :, :1], np.random.default_rng(1))
    assert gray.shape == (32, 32, 1)


def test_metrics_rank_the_original_and_count_identical_copies_as_it() -> None:
    bank = F.normalize(torch.eye(4), dim=1)
    # Query 0's original (bank 2) ranks second behind bank 0; query 1's original (bank 3)
    # ranks first, and bank 1 holds the same pixels as bank 3, so it is the original too.
    queries = F.normalize(torch.tensor([[0.9, 0.0, 0.5, 0.0], [0.0, 0.6, 0.0, 0.8]]), dim=1)
    cds = CopyDetectionSet(
        queries=np.zeros((2, 1, 1, 1), np.uint8),
        targets=np.array([2, 3]),
        groups=np.array([0, 1, 2, 1]),
        edits=("", ""),
    )
    metrics = copy_detection_metrics(bank, queries, cds)
    assert metrics["copy_r1"] == pytest.approx(0.5)
    assert metrics["copy_r10"] == pytest.approx(1.0)
    assert metrics["copy_map"] == pytest.approx((1 / 2 + 1) / 2)


def test_the_held_out_share_is_fixed_by_path_and_never_trained_on(tmp_path: Path) -> None:
    clip_art_folder(tmp_path, 40)
    split = load_data(str(tmp_path), RGB32)
    again = load_data(str(tmp_path), RGB32)
    assert len(split.heldout) == holdout_count(40) == 8
    assert split.heldout.names == again.heldout.names
    assert not set(split.heldout.names) & set(split.train.names)
    assert len(split.train) + len(split.heldout) == 40
    assert [holdout_count(n) for n in (1000, 4000, 8000, 20000)] == [200, 200, 400, 1000]


def test_label_depth_picks_the_folder_level_that_names_a_label(tmp_path: Path) -> None:
    clip_art_folder(tmp_path, 8, classes=("cats", "dogs"))
    assert load_image_folder(tmp_path, RGB32).class_names == ("cats", "dogs")
    two = load_image_folder(tmp_path, RGB32, label_depth=2)
    assert two.class_names == ("cats/deeper", "dogs/deeper")
    assert load_image_folder(tmp_path, RGB32, label_depth=0).labels is None
    assert load_image_folder(tmp_path, RGB32, label_depth=3).labels is None


TINY = ["--image-size", "32", "--batch-size", "16", "--set", "widths=[16,32,64]"]


@dataclass
class FolderRun:
    out: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> FolderRun:
    """A run on an unlabeled folder of colour PNGs with transparency, no subfolders."""
    root = clip_art_folder(tmp_path_factory.mktemp("art"), 60)
    out = tmp_path_factory.mktemp("models") / "art"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["train", "--data", str(root), "--epochs", "2", *TINY, "--out", str(out)])
    assert code == 0, stderr.getvalue()[-2000:]
    return FolderRun(out, stdout.getvalue(), stderr.getvalue())


def test_a_folder_run_reports_copy_detection_per_epoch_and_in_the_card(
    folder_run: FolderRun,
) -> None:
    out = folder_run.out
    epoch_lines = [line for line in folder_run.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and all("copy R@1" in line for line in epoch_lines)
    assert "(pixels " in epoch_lines[0] and "loss " in epoch_lines[0]
    assert "Copy detection R@1" in folder_run.stdout
    assert str(out / "neighbours.png") in folder_run.stdout
    assert "held out, never trained on: 12 of 60 images" in folder_run.stderr

    result = json.loads((out / "metrics.json").read_text())
    assert result["heldout_images"] == result["queries"] == 12 and result["bank_images"] == 60
    for metric in ("copy_r1", "copy_r10", "copy_map"):
        row = result["metrics"][metric]
        assert all(0 <= row[key] <= 1 for key in ("model", "raw_pixels", "random_init"))
    assert result["metrics"]["copy_r10"]["model"] >= result["metrics"]["copy_r1"]["model"]
    assert not any(name.startswith("knn") for name in result["metrics"])  # no labels

    card = (out / "README.md").read_text()
    assert "Copy detection R@1" in card and "![neighbours](neighbours.png)" in card
    assert "![copy_r1](copy_r1.png)" in card and "random init" in card
    with Image.open(out / "neighbours.png") as grid:
        assert grid.size[0] > 600 and grid.size[1] > 600
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all("copy_r1" in entry for entry in log)


def test_evaluate_measures_any_model_on_any_folder(
    folder_run: FolderRun, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = folder_run.out
    other = clip_art_folder(tmp_path / "other", 30, classes=("a", "b", "c"))
    assert main(["evaluate", "--model", str(model), "--data", str(other)]) == 0
    printed = capsys.readouterr().out
    assert "copy_r1" in printed and "knn_top1_k200_t0.1" in printed and "--out" in printed
    assert not (tmp_path / "report").exists()

    report = tmp_path / "report"
    assert (
        main(["evaluate", "--model", str(model), "--data", str(other), "--out", str(report)]) == 0
    )
    result = json.loads((report / "metrics.json").read_text())
    assert result["bank_images"] == 30 and result["queries"] == holdout_count(30)
    assert "knn_top1_k200_t0.1" in result["metrics"]
    assert (report / "neighbours.png").is_file() and (report / "embedding_map.png").is_file()
