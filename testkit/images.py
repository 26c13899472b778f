"""Images made with Pillow: random PNGs, and small colour drawings with transparency (alone, in
folders, and drawn in two styles) for training and evaluation tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps


def png_bytes(seed: int, size: tuple[int, int] = (28, 28), mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def clip_art(seed: int, size: int = 48) -> Image.Image:
    """A colour drawing with transparency: a few random shapes on a clear background."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        box = sorted(rng.integers(0, size, 2)), sorted(rng.integers(0, size, 2))
        xy = [box[0][0], box[1][0], box[0][1] + 4, box[1][1] + 4]
        fill = (*(int(v) for v in rng.integers(0, 256, 3)), 255)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(xy, fill=fill)
    return image


def clip_art_folder(
    root: Path, count: int, *, classes: tuple[str, ...] = (), first_seed: int = 0
) -> Path:
    """`count` drawings (seeds from `first_seed`) as PNGs, in class/deeper/ subfolders when
    `classes` are given."""
    for i in range(count):
        folder = root / classes[i % len(classes)] / "deeper" if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        clip_art(first_seed + i).save(folder / f"art{i:03d}.png")
    return root


def two_styles(root: Path, shared: int, only_a: int = 0, only_b: int = 0) -> tuple[Path, Path]:
    """a/ draws art{i} as is, b/ the same drawings inverted on dark blue; extra drawings in one
    folder only (distractors) have names the other lacks."""
    a, b = root / "a", root / "b"
    for folder in (a, b):
        folder.mkdir(parents=True)
    for i in range(shared + only_a + only_b):
        art = clip_art(i)
        if i < shared + only_a:
            art.save(a / f"art{i:03d}.png")
        if i < shared or i >= shared + only_a:
            flat = Image.alpha_composite(Image.new("RGBA", art.size, (20, 20, 90, 255)), art)
            ImageOps.invert(flat.convert("RGB")).save(b / f"art{i:03d}.png")
    return a, b
