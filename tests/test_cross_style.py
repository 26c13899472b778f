"""Cross-style retrieval (training/cross_style.py): recall@k between two folders that draw the
same things, through `python -m training evaluate --cross-style`; and `--set evaluate=false`."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.imaging import InputSpec
from testkit.images import two_styles
from training.__main__ import main
from training.cross_style import cross_style_metrics, load_pair

SPEC = InputSpec(channels=3, height=32, width=32, colour_mode="RGB")


def _main(args: list[str]) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        code = main(args)
    return code, stderr.getvalue()


def test_pairs_are_matched_by_stem_and_unpaired_images_stay_as_distractors(
    tmp_path: Path,
) -> None:
    a, b = two_styles(tmp_path, shared=5, only_a=2, only_b=3)
    pair = load_pair(a, b, SPEC)
    assert (len(pair.a), len(pair.b), pair.shared) == (7, 8, 5)
    names_a = [pair.a.names[i] for i in pair.a_of_b]
    names_b = [pair.b.names[i] for i in pair.b_of_a]
    assert names_a == names_b == [f"art{i:03d}.png" for i in range(5)]
    assert "5 things drawn in both" in pair.describe()


def test_recall_counts_the_namesake_within_k_in_both_directions(tmp_path: Path) -> None:
    a, b = two_styles(tmp_path, shared=12, only_b=3)
    pair = load_pair(a, b, SPEC)
    rng = np.random.default_rng(0)
    h_a = F.normalize(torch.from_numpy(rng.normal(size=(12, 16))).float(), dim=1)
    # b's namesakes sit on a's vectors: R@1 is 1 both ways, the distractors far off.
    h_b = torch.cat([h_a, -h_a[:3]])
    assert cross_style_metrics(h_a, h_b, pair) == {"cross_style_r1": 1.0, "cross_style_r10": 1.0}
    # Shuffled namesakes: a's i-th drawing finds b's (i+1)-th; b's finds a's (i-1)-th.
    shifted = torch.cat([h_a.roll(1, dims=0), -h_a[:3]])
    result = cross_style_metrics(h_a, shifted, pair)
    assert result["cross_style_r1"] == 0.0
    assert 0.0 < result["cross_style_r10"] <= 1.0


def test_folders_sharing_no_name_are_refused_with_a_hint(tmp_path: Path) -> None:
    a, b = two_styles(tmp_path, shared=0, only_a=3, only_b=3)
    with pytest.raises(ValueError, match=r"no file name \(stem\) is in both folders"):
        load_pair(a, b, SPEC)


def test_evaluate_cross_style_writes_metrics_and_the_card_line(tmp_path: Path) -> None:
    a, b = two_styles(tmp_path / "styles", shared=10)
    out = tmp_path / "models" / "icons"
    args = ["train", "--data", str(tmp_path / "styles"), "--out", str(out), "--epochs", "1"]
    args += ["--image-size", "32", "--batch-size", "8", "--set", "widths=[8,16,64]"]
    code, stderr = _main([*args, "--set", "depths=[1,1,1]", "--set", "evaluate=false"])
    assert code == 0, stderr[-2000:]
    # evaluate=false: the model files, no evaluation, and a hint how to run it.
    assert (out / "encoder.onnx").exists() and (out / "model.json").exists()
    assert not (out / "metrics.json").exists() and not (out / "README.md").exists()

    code, stderr = _main(["evaluate", "--model", str(out), "--cross-style", str(a), str(b)])
    assert code == 0, stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("cross_style_r1", "cross_style_r10"):
        row = metrics["metrics"][name]
        assert set(row) == {"model", "raw_pixels", "random_init", "protocol"}
        assert all(0.0 <= row[k] <= 1.0 for k in ("model", "raw_pixels", "random_init"))
        assert "10 things drawn in both" in row["protocol"]
    # With 10 namesakes among 10 drawings, R@10 is 1 whatever the features.
    assert metrics["metrics"]["cross_style_r10"]["raw_pixels"] == 1.0
    card = (out / "README.md").read_text()
    assert "**Cross-style retrieval R@1" in card and "raw pixels" in card
    assert (out / "cross_style.png").stat().st_size > 0 and "(cross_style.png)" in card


def test_evaluate_cross_style_needs_two_folders(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _main(["evaluate", "--model", str(tmp_path), "--cross-style", str(tmp_path)])
