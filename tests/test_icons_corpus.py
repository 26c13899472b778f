"""bench/icons_corpus.py on a tiny fake icon-theme tree: layout, symlink dedupe, manifest."""

from __future__ import annotations

import csv
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.skipif(
    shutil.which("rsvg-convert") is None, reason="needs rsvg-convert (apt-get install librsvg2-bin)"
)

spec = importlib.util.spec_from_file_location(
    "icons_corpus", Path(__file__).resolve().parent.parent / "bench" / "icons_corpus.py"
)
assert spec and spec.loader
icons_corpus = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = icons_corpus  # dataclasses look their module up
spec.loader.exec_module(icons_corpus)


def svg(colour: str, width: int = 48, height: int = 48) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<rect x="4" y="4" width="{width - 8}" height="{height - 8}" fill="{colour}"/></svg>'
    )


def theme(root: Path, name: str, dirs: dict[str, int]) -> Path:
    sections = "".join(
        f"\n[{d}]\nSize={size}\nContext=Places\nType=Fixed\n" for d, size in dirs.items()
    )
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "index.theme").write_text(
        f"[Icon Theme]\nName={name}\nDirectories={','.join(dirs)}\n{sections}"
    )
    for d in dirs:
        (folder / d).mkdir(parents=True)
    return folder


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    icons = tmp_path / "icons"
    flat = theme(icons, "Flat", {"16x16/places": 16, "48x48/places": 48})
    (flat / "48x48/places/folder.svg").write_text(svg("blue"))
    (flat / "48x48/places/inode-directory.svg").symlink_to("folder.svg")  # one drawing, two names
    (flat / "48x48/places/user-trash.svg").write_text(svg("gray", 48, 24))  # wide: padded
    (flat / "48x48/places/user-trash-symbolic.svg").write_text(svg("black"))  # skipped
    (flat / "48x48/places/folder-symbolic.symbolic.png").write_bytes(b"")  # Adwaita's: skipped
    (flat / "16x16/places/user-home.svg").write_text(svg("green"))  # below --min-size
    shiny = theme(icons, "Shiny", {"64x64/places": 64, "32x32/places": 32})
    (shiny / "64x64/places/folder.png").symlink_to("../../real/folder-big.png")
    (shiny / "real").mkdir()
    Image.new("RGBA", (64, 64), "orange").save(shiny / "real/folder-big.png")
    (shiny / "32x32/places/folder.svg").write_text(svg("red"))  # smaller: the 64 px PNG wins
    (shiny / "64x64/places/gone.svg").symlink_to("missing.svg")  # broken link: skipped
    (shiny / "64x64/places/user-trash.svg").write_text(svg("gray", 48, 24))  # Flat's: dropped
    theme(icons, "Shiny-Dark", {"64x64/places": 64})  # a recolouring: skipped
    art = tmp_path / "clipart"
    (art / "animals").mkdir(parents=True)
    (art / "people/smilies").mkdir(parents=True)
    Image.new("RGB", (200, 100), "white").save(art / "animals/cat one.png")
    Image.new("RGB", (50, 80), "black").save(art / "animals/dog.png")
    shutil.copy(art / "animals/dog.png", art / "animals/dog-copy.png")  # same bytes: one drawing
    Image.new("RGB", (10, 10), "red").save(art / "animals/fox+.png")  # both sanitise to fox-
    Image.new("RGB", (10, 10), "blue").save(art / "animals/fox-.png")
    Image.new("RGB", (60, 60), "yellow").save(art / "people/smilies/smiley.png")  # never taken
    return icons, art


def run(tree: tuple[Path, Path], out: Path, **kw) -> dict[str, set[str]]:
    icons, art = tree
    return icons_corpus.build(out, icon_root=icons, clipart_root=art, log=lambda _: None, **kw)


def test_layout_dedupe_and_manifest(tree: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    written = run(tree, out, size=32, clipart=10, jobs=2)

    # folder and inode-directory are one drawing in Flat: kept once, under the name Shiny shares
    assert written == {"flat": {"folder", "user-trash"}, "shiny": {"folder"}}
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == [
        "clipart/clipart-animals-cat-one.png",
        "clipart/clipart-animals-dog-copy.png",
        "clipart/clipart-animals-fox--c1eb23.png",  # fox-.png: the name was taken by fox+.png
        "clipart/clipart-animals-fox-.png",
        "flat/folder.png",
        "flat/user-trash.png",
        "shiny/folder.png",
    ]
    with Image.open(out / "flat/user-trash.png") as im:
        assert (im.size, im.mode) == ((32, 32), "RGBA")
        assert im.getpixel((16, 2))[3] == 0  # padded with transparency
    with Image.open(out / "shiny/folder.png") as im:
        assert im.getpixel((16, 16))[:3] == (255, 165, 0)  # the PNG, not the smaller SVG
    with Image.open(out / "clipart/clipart-animals-cat-one.png") as im:
        assert im.size == (32, 16)  # clip art keeps its aspect, unpadded

    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["path"], r["group"], r["theme"]) for r in rows] == [
        ("flat/folder.png", "folder", "flat"),
        ("flat/user-trash.png", "user-trash", "flat"),
        ("shiny/folder.png", "folder", "shiny"),
        ("clipart/clipart-animals-cat-one.png", "", "clipart"),
        ("clipart/clipart-animals-dog-copy.png", "", "clipart"),
        ("clipart/clipart-animals-fox-.png", "", "clipart"),
        ("clipart/clipart-animals-fox--c1eb23.png", "", "clipart"),
    ]


def test_rerun_keeps_files_and_drops_stale(tree: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(tree, out, size=32, clipart=0)
    stamp = (out / "flat/folder.png").stat().st_mtime_ns
    (out / "flat/old-name.png").write_bytes(b"stale")
    assert run(tree, out, size=32, clipart=0, themes=["flat"]) == {"flat": {"folder", "user-trash"}}
    assert (out / "flat/folder.png").stat().st_mtime_ns == stamp  # not rendered again
    assert not (out / "flat/old-name.png").exists()
    run(tree, out, size=24, clipart=0, themes=["flat"])
    with Image.open(out / "flat/folder.png") as im:
        assert im.size == (24, 24)  # another --size renders again
