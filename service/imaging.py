"""Bytes to pixels: the one image-decoding function that training and the service share.

It is torch-free on purpose: the service image carries no torch, and training calls the very
same function for image folders, so a file gives identical arrays in both halves.

Exception tree (each maps to one HTTP status in the service):

    ImageError (ValueError)
    ├── UnsupportedFormatError   415: a format outside the allow-list
    ├── ImageTooLargeError       413: more pixels than allowed, judged from the header
    └── UndecodableImageError    422: empty, truncated, corrupt or not an image at all
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pillow_heif
from PIL import Image, ImageFile, ImageOps

from service.avif_size import MalformedAVIF, coded_sizes

# Pillow reads AVIF itself; HEIC/HEIF comes through libheif as Pillow's "HEIF" format. Only the
# primary image is decoded, so thumbnails, depth and auxiliary images are not even listed. Both
# give their size from the header (the ispe box), and libheif refuses a picture that decodes to
# another size, so the pixel limit below holds; libheif's own security limits stay on.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF"})
DEFAULT_MAX_PIXELS = 40_000_000  # about 6300×6300; far above any photo, far below a bomb

ColourMode = Literal["L", "RGB"]
ResizeRule = Literal["stretch", "center_crop"]

# Truncated files must fail, never decode half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


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

    Steps, in order: format allow-list, pixel limit (from the headers, before decoding: an
    AVIF's AV1 sequence headers too),
    EXIF orientation, alpha flattened onto white, colour mode, resize rule.
    """
    if not data:
        raise UndecodableImageError("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image is too large: {exc}") from exc
    except Exception as exc:  # Pillow raises many types for garbage; all mean "not an image"
        raise UndecodableImageError("not a readable image") from exc

    with image:
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
        if image.format == "AVIF":
            _check_coded_size(data, max_pixels)
        try:
            if image.format == "JPEG":
                # Let libjpeg decode at a reduced scale when the target is much smaller.
                image.draft(spec.colour_mode, _draft_size(image.size, spec))
            image.load()
            upright = ImageOps.exif_transpose(image)
            pixels = np.asarray(_resize(_to_colour_mode(upright, spec.colour_mode), spec))
        except ImageError:
            raise
        except Exception as exc:
            raise UndecodableImageError(f"image data is corrupt or truncated: {exc}") from exc
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return pixels


def _check_coded_size(data: bytes, max_pixels: int) -> None:
    """An AVIF's AV1 pictures decode at the size their sequence headers give, whatever its
    header (which Pillow reports) says; libavif would allocate all of it (avif_size.py)."""
    try:
        sizes = coded_sizes(data)
    except MalformedAVIF as exc:
        raise UndecodableImageError(f"the AVIF container is malformed: {exc}") from exc
    for width, height in sizes:
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"its AV1 picture is coded at {width}×{height} = {width * height} pixels, "
                f"whatever its header says; the limit is {max_pixels}"
            )
    if sum(width * height for width, height in sizes) > 2 * max_pixels:  # colour + alpha
        raise ImageTooLargeError(f"its AV1 pictures hold more than 2 × {max_pixels} pixels")


def decoded_pixels(data: bytes) -> int:
    """How many pixels decoding `data` would produce, from its headers alone (0 when they cannot
    be read: decode_image then refuses the file)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if image.format == "AVIF":
                return max([width * height, *(w * h for w, h in coded_sizes(data))])
            return width * height
    except Exception:
        return 0


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
