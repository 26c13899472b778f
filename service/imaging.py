"""Bytes to pixels: the one image-decoding function that training and the service share.

It is torch-free on purpose: the service image carries no torch, and training calls the very
same function for image folders, so a file gives identical arrays in both halves.

Exception tree (each maps to one HTTP status in the service):

    ImageError (ValueError)
    ├── UnsupportedFormatError   415: a format outside the allow-list
    ├── ImageTooLargeError       413: more pixels or scans than allowed, judged from the headers
    └── UndecodableImageError    422: empty, truncated, corrupt or not an image at all

Every limit is judged from the headers before anything is decoded, and from what the decoder
will really make, not only the size a header declares (service/decode_cost.py).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pillow_heif
from PIL import Image, ImageFile, ImageOps, PngImagePlugin

from service import decode_cost

# Pillow reads AVIF itself; HEIC/HEIF comes through libheif as Pillow's "HEIF" format. Only the
# primary image is decoded, so thumbnails, depth and auxiliary images are not even listed.
# libheif's own security limits stay on.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF"})
DEFAULT_MAX_PIXELS = 40_000_000  # about 6300×6300; far above any photo, far below a bomb
# libjpeg's standard progressive script has 10 scans; each scan decodes the image once more.
MAX_JPEG_SCANS = 32

ColourMode = Literal["L", "RGB"]
ResizeRule = Literal["stretch", "center_crop"]

# Truncated files must fail, never decode half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# PNG text chunks are inflated as the file is opened: 1 MB in all (Pillow's default, 64 MB,
# costs a 100 KB file 0.2 s of CPU), the most Pillow allows one chunk anyway.
PngImagePlugin.MAX_TEXT_MEMORY = PngImagePlugin.MAX_TEXT_CHUNK


class ImageError(ValueError):
    """Base class: the bytes cannot become the model's input."""


class UnsupportedFormatError(ImageError):
    pass


class ImageTooLargeError(ImageError):
    pass


class UndecodableImageError(ImageError):
    pass


@dataclass(frozen=True)
class InputSpec:
    """The model's input, as model.json's `input` block describes it."""

    channels: int
    height: int
    width: int
    colour_mode: ColourMode
    resize: ResizeRule = "stretch"

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        spec = cls(
            channels=int(d["channels"]),
            height=int(d["height"]),
            width=int(d["width"]),
            colour_mode=d["colour_mode"],
            resize=d.get("resize", "stretch"),
        )
        if spec.colour_mode not in ("L", "RGB"):
            raise ValueError(f"colour_mode must be 'L' or 'RGB', not {spec.colour_mode!r}")
        if spec.channels != (1 if spec.colour_mode == "L" else 3):
            raise ValueError(f"{spec.channels} channels do not fit colour mode {spec.colour_mode}")
        if spec.resize not in ("stretch", "center_crop"):
            raise ValueError(f"resize must be 'stretch' or 'center_crop', not {spec.resize!r}")
        return spec

    def to_dict(self) -> dict:
        return {
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "colour_mode": self.colour_mode,
            "resize": self.resize,
        }


def decode_image(
    data: bytes, spec: InputSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode image bytes into a uint8 array of shape (H, W, C) ready for the model.

    Steps, in order: format allow-list, limits (from the headers, before decoding), first
    frame only, EXIF orientation, alpha flattened onto white, colour mode, resize rule.
    """
    image, _ = open_image(data, max_pixels)
    return decode_opened(image, spec)


def decode_opened(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """decode_image's work after open_image: the pixels of an image whose headers passed; the
    image is closed."""
    with image:
        try:
            if image.format == "JPEG":
                # Let libjpeg decode at a reduced scale when the target is much smaller.
                image.draft(spec.colour_mode, _draft_size(image.size, spec))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no copy when it is upright already
            pixels = np.asarray(_resize(_to_colour_mode(image, spec.colour_mode), spec))
        except ImageError:
            raise
        except Exception as exc:
            raise UndecodableImageError(f"image data is corrupt or truncated: {exc}") from exc
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return pixels


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, int]:
    """The opened (not yet decoded) image and the pixels decoding it makes, judged from its
    headers once they pass every check; raises the ImageError that decode_image would."""
    if not data:
        raise UndecodableImageError("the file is empty")
    if (profiles := decode_cost.png_profiles(data)) > 1:
        raise UndecodableImageError(f"PNG holds {profiles} colour profiles (iCCP); it may hold one")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image is too large: {exc}") from exc
    except Exception as exc:  # Pillow raises many types for garbage; all mean "not an image"
        raise UndecodableImageError("not a readable image") from exc
    try:
        return image, _checked_pixels(image, data, max_pixels)
    except BaseException:
        image.close()
        raise


def _checked_pixels(image: Image.Image, data: bytes, max_pixels: int) -> int:
    if image.format not in ALLOWED_FORMATS:
        allowed = ", ".join(sorted(ALLOWED_FORMATS))
        raise UnsupportedFormatError(f"format {image.format} is not allowed ({allowed})")
    width, height = image.size
    if width < 1 or height < 1:
        raise UndecodableImageError("image has no pixels")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}×{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    try:
        pixels = decode_cost.pixels(image, data)
    except ValueError as exc:
        raise UndecodableImageError(f"image headers are malformed: {exc}") from exc
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}×{height}, but its {image.format} data decodes to {pixels} pixels;"
            f" the limit is {max_pixels}"
        )
    if image.format == "JPEG" and (scans := decode_cost.jpeg_scans(data)) > MAX_JPEG_SCANS:
        raise ImageTooLargeError(
            f"progressive JPEG has {scans} scans, each a decode of the image;"
            f" the limit is {MAX_JPEG_SCANS}"
        )
    return pixels


def _draft_size(size: tuple[int, int], spec: InputSpec) -> tuple[int, int]:
    # Keep at least the target size on the shorter side so the resize still antialiases.
    scale = max(spec.width / size[0], spec.height / size[1])
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _to_colour_mode(image: Image.Image, mode: ColourMode) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8))
    elif image.mode in ("I", "F"):
        image = Image.fromarray(
            np.clip(np.asarray(image, dtype=np.float64), 0, 255).astype(np.uint8)
        )
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert(mode) if image.mode != mode else image


def _resize(image: Image.Image, spec: InputSpec) -> Image.Image:
    target = (spec.width, spec.height)
    if image.size == target:
        return image
    if spec.resize == "center_crop":
        return ImageOps.fit(image, target, method=Image.Resampling.BILINEAR)
    return image.resize(target, Image.Resampling.BILINEAR)


def sniff_format(data: bytes) -> str:
    """The format name from the header alone (for bytes decode_image already accepted)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format or "UNKNOWN"
    except Exception:
        return "UNKNOWN"


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode a (H, W, C) or (H, W) uint8 array as PNG bytes (for galleries and tests)."""
    array = pixels[:, :, 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()
