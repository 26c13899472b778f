"""The strong edits of copy detection: an image as it comes back copied and reposted (cropped,
flipped, recoloured, rotated, blurred, bordered or captioned, then JPEG-compressed).

Pillow and numpy only, so that both `training` (copy-detection R@1 of a trained model) and the
service (`python -m service model check`: a new model against the serving one, on a sample of
your own gallery) make the same edits from the same seeds.
"""

from __future__ import annotations

import io
import math
import string

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

EDIT_SEED = 0
EDIT_PROTOCOL = (
    "one seeded strong edit per image: a crop of 40-90 % of the area resized back, "
    "a flip (p 0.5), brightness/contrast/saturation jitter (0.6-1.4), a rotation of up to 10 "
    "degrees, a Gaussian blur (p 0.5), a border or a text overlay, then JPEG at quality 15-45"
)


def strong_edit(pixels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One strong edit of a uint8 (H, W, C) image, as an image copied and reposted would get."""
    height, width, channels = pixels.shape
    mode = "L" if channels == 1 else "RGB"
    image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode)
    background = image.getpixel((0, 0))
    done = []

    area, ratio = rng.uniform(0.4, 0.9), math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    crop_w = min(width, max(1, round(width * math.sqrt(area * ratio))))
    crop_h = min(height, max(1, round(height * math.sqrt(area / ratio))))
    left, top = rng.integers(0, width - crop_w + 1), rng.integers(0, height - crop_h + 1)
    image = image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height))
    done.append(f"crop {crop_w * crop_h / (width * height):.0%}")
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
        done.append("flip")
    brightness, contrast, saturation = rng.uniform(0.6, 1.4, size=3)
    image = ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(brightness)).enhance(
        contrast
    )
    if mode == "RGB":
        image = ImageEnhance.Color(image).enhance(saturation)
    done.append("jitter")
    angle = rng.uniform(-10, 10)
    image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=background)
    done.append(f"rotate {angle:+.0f}°")
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * width / 64))
        done.append("blur")
    if rng.random() < 0.5:
        image = _border(image, rng)
        done.append("border")
    else:
        image = _text_overlay(image, rng)
        done.append("text")
    quality = int(rng.integers(15, 46))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    image = Image.open(buffer)
    done.append(f"JPEG q{quality}")
    out = np.asarray(image.convert(mode))
    return (out[:, :, None] if channels == 1 else out), ", ".join(done)


def _colour(rng: np.random.Generator, mode: str) -> int | tuple[int, ...]:
    rgb = tuple(int(v) for v in rng.integers(0, 256, size=3))
    return rgb if mode == "RGB" else rgb[0]


def _border(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    size = image.size
    pad = max(1, round(rng.uniform(0.05, 0.15) * size[0]))
    return ImageOps.expand(image, border=pad, fill=_colour(rng, image.mode)).resize(size)


def _text_overlay(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    font = ImageFont.load_default(size=max(8, height // 5))
    text = "".join(rng.choice(list(string.ascii_letters + string.digits), int(rng.integers(3, 9))))
    position = (int(rng.integers(0, max(1, width // 2))), int(rng.integers(0, max(1, height - 8))))
    ImageDraw.Draw(image).text(position, text, fill=_colour(rng, image.mode), font=font)
    return image
