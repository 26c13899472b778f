"""Grouped positives (`--group-by`): group ids from file stems or a CSV, the errors a user can
meet, group-aware epoch order, and a tiny run where grouping pulls one concept's two styles
together."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from service.imaging import InputSpec
from training.__main__ import main
from training.data import load_data, load_image_folder
from training.evaluate import onnx_embedder
from training.groups import CHUNK, epoch_order, group_ids, summary
from training.train import TrainConfig

RGB32 = InputSpec(channels=3, height=32, width=32, colour_mode="RGB")
CONCEPTS = 16
STYLES = ("styleA", "styleB")


def _concepts(root: Path) -> Path:
    """Each concept a shape of its own (kind, place, size, colour), drawn in two styles that
    share no colour: styleA filled on white, styleB in the inverted colour on dark blue. The
    file stem names the concept in both styles."""
    for k in range(CONCEPTS):
        rng = np.random.default_rng(k)
        left, top, size = (int(v) for v in (*rng.integers(2, 14, 2), rng.integers(14, 28)))
        box = [left, top, left + size, top + size]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        for style in STYLES:
            dark = style == "styleB"
            image = Image.new("RGB", (40, 40), (30, 30, 60) if dark else (255, 255, 255))
            fill = tuple(255 - c for c in colour[::-1]) if dark else colour
            draw = ImageDraw.Draw(image)
            if k % 4 == 0:
                draw.ellipse(box, fill=fill)
            elif k % 4 == 1:
                draw.rectangle(box, fill=fill)
            elif k % 4 == 2:
                apex = ((box[0] + box[2]) // 2, box[1])
                draw.polygon([(box[0], box[3]), (box[2], box[3]), apex], fill=fill)
            else:
                draw.line(box, fill=fill, width=4)
                draw.line([box[0], box[3], box[2], box[1]], fill=fill, width=4)
            (root / style).mkdir(parents=True, exist_ok=True)
            image.save(root / style / f"c{k:02d}.png")
    return root


def _names(*names: str) -> tuple[str, ...]:
    return tuple(names)


def test_name_groups_one_stem_across_subfolders_and_leaves_single_stems_out(
    tmp_path: Path,
) -> None:
    names = _names("papirus/folder.png", "breeze/folder.svg", "breeze/home.png", "top.png")
    assert group_ids(names, "name", tmp_path).tolist() == [0, 0, -1, -1]


def _csv(tmp_path: Path, text: str, files: tuple[str, ...]) -> Path:
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    path = tmp_path / "groups.csv"
    path.write_text(text)
    return path


FILES = _names("a/1.png", "a/2.png", "b/3.png", "b/4.png", "5.png")


def test_a_csv_with_or_without_header_extra_columns_and_empty_cells(tmp_path: Path) -> None:
    plain = _csv(tmp_path, "a/1.png,shoe\n./a/2.png,shoe\nb/3.png,\nb/4.png,bag\n", FILES)
    assert group_ids(FILES, str(plain), tmp_path).tolist() == [0, 0, -1, -1, -1]
    header = "note,group,path\nx,shoe,a/1.png\ny,shoe,b/3.png\nz,bag,b/4.png\n,bag,5.png\n"
    named = _csv(tmp_path, header, FILES)
    assert group_ids(FILES, str(named), tmp_path).tolist() == [1, -1, 1, 0, 0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a/1.png,x\nc/9.png,x\nc/8.png,y\n", r"2 of its 3 paths are not files in .*c/8.png, c/9"),
        ("file,label\na/1.png,x\n", r"neither a header naming a 'path' and a 'group' column"),
        ("a/1.png,x\na/1.png,y\n", r"a/1.png is in two groups"),
        ("a/1.png,x\na/2.png,y\n", None),  # parses; summary() refuses it below
    ],
)
def test_a_csv_the_folder_does_not_match_is_refused(
    tmp_path: Path, text: str, message: str | None
) -> None:
    path = _csv(tmp_path, text, FILES)
    if message:
        with pytest.raises(ValueError, match=message):
            group_ids(FILES, str(path), tmp_path)
        return
    with pytest.raises(ValueError, match="no group has two images among the 5 training"):
        summary(group_ids(FILES, str(path), tmp_path), str(path))


def test_summary_counts_groups_of_two_or_more() -> None:
    info = summary(np.array([0, 0, 1, -1, 2, 2, 2]), "name")
    assert info == {"by": "name", "groups": 2, "grouped_images": 5, "images": 7}
    with pytest.raises(ValueError, match="no two images share a file stem"):
        summary(np.array([-1, -1, 3]), "name")


def test_groups_survive_the_held_out_split_and_limit(tmp_path: Path) -> None:
    split = load_data(str(_concepts(tmp_path)), RGB32, group_by="name").limited(20)
    for part in (split.train, split.heldout):
        stems = [Path(name).stem for name in part.names]
        assert part.groups is not None and len(part.groups) == len(part)
        assert all(  # one stem, one id, in either part
            (part.groups[i] == part.groups[j]) == (stems[i] == stems[j])
            for i in range(len(part))
            for j in range(len(part))
        )


def test_group_by_errors_a_user_can_meet(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a folder of images"):
        load_data("fashion-mnist", RGB32, group_by="name")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_data(str(tmp_path), RGB32, group_by=str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="needs --loss ntxent"):
        TrainConfig(group_by="name", loss="triplet")


def test_epoch_order_keeps_group_mates_together_and_every_image_once() -> None:
    groups = np.array([-1] * 20 + [0] * 3 + [1] * 9 + [2] * 2)
    order = epoch_order(groups, np.random.default_rng([0, 1]))
    assert sorted(order.tolist()) == list(range(len(groups)))
    np.testing.assert_array_equal(order, epoch_order(groups, np.random.default_rng([0, 1])))
    assert not np.array_equal(order, epoch_order(groups, np.random.default_rng([0, 2])))

    def runs(group: int) -> int:  # stretches of consecutive positions the group occupies
        return 1 + int((np.diff(np.sort(np.flatnonzero(groups[order] == group))) > 1).sum())

    assert runs(0) == runs(2) == 1  # small groups side by side
    assert runs(1) <= -(-9 // CHUNK)  # nine members in chunks of at most CHUNK


def _train(data: Path, out: Path, *extra: str) -> str:
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "12"]
    args += ["--image-size", "32", "--batch-size", "12", "--label-depth", "0"]
    args += ["--set", "widths=[16,32,64]", "--set", "eval_every=100", *extra]
    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        assert main(args) == 0, stderr.getvalue()[-2000:]
    return stderr.getvalue()


def test_grouping_by_name_pulls_one_concepts_two_styles_together(tmp_path: Path) -> None:
    data = _concepts(tmp_path / "concepts")
    started = _train(data, tmp_path / "grouped", "--group-by", "name")
    _train(data, tmp_path / "plain")
    assert "--group-by name: 11 groups hold 22 of the 26 training images" in started

    folder = load_image_folder(data, RGB32, label_depth=0)
    styles = [[folder.names.index(f"{s}/c{k:02d}.png") for k in range(CONCEPTS)] for s in STYLES]

    def cosines(model: Path) -> tuple[float, float]:
        h = onnx_embedder(model)(folder.images)
        scores = h[styles[0]] @ h[styles[1]].T  # (concept in A, concept in B)
        same = np.diag(scores).mean()
        return same, (scores.sum() - np.trace(scores)) / (CONCEPTS * (CONCEPTS - 1))

    grouped_same, grouped_other = cosines(tmp_path / "grouped")
    plain_same, _ = cosines(tmp_path / "plain")
    assert grouped_same > plain_same + 0.1  # about +0.25 over seeds 0-3
    assert grouped_same > grouped_other  # a concept's other style beats other concepts

    info = json.loads((tmp_path / "grouped" / "model.json").read_text())
    grouping = {"by": "name", "groups": 11, "grouped_images": 22, "images": 26}
    assert info["training"]["grouping"] == grouping
    assert info["loss"] == {"name": "supcon", "temperature": 0.2, "koleo_weight": 0.0}
    assert (
        "Grouped positives: --group-by name: 11 groups"
        in (tmp_path / "grouped" / "README.md").read_text()
    )
    plain = json.loads((tmp_path / "plain" / "model.json").read_text())
    assert plain["training"]["grouping"] is None and plain["loss"]["name"] == "ntxent"
