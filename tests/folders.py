"""Folders of small colour drawings with transparency, for training and evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


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
