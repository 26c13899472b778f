"""What counts as an image: bytes, a path (str or Path), a binary file object, or a PIL image
(the pil extra). Each becomes a (filename, bytes) pair for a multipart upload; the service
decides the format from the bytes."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from PIL import Image as PILImage

ImageLike = Union[
    bytes, bytearray, memoryview, str, "os.PathLike[str]", IO[bytes], "PILImage.Image"
]

FileField = tuple[str, tuple[str, bytes, str]]


def _is_pil(value: object) -> bool:
    # Without importing Pillow: most callers never pass PIL images and need not install it.
    return type(value).__module__.startswith("PIL.") and hasattr(value, "save")


def is_one_image(value: object) -> bool:
    return (
        isinstance(value, bytes | bytearray | memoryview | str | os.PathLike)
        or hasattr(value, "read")
        or _is_pil(value)
    )


def as_list(images: ImageLike | Iterable[ImageLike]) -> list[ImageLike]:
    """One image or several → a list (a str or bytes is one image, never a sequence)."""
    if is_one_image(images):
        return [images]  # type: ignore[list-item]
    return list(images)  # type: ignore[arg-type]


def read_image(image: ImageLike, index: int) -> tuple[str, bytes]:
    """(filename, bytes) of one image; the filename is how the service's errors name it."""
    value: Any = image
    if isinstance(value, bytes | bytearray | memoryview):
        return f"image-{index}", bytes(value)
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        return path.name, path.read_bytes()
    if hasattr(value, "read"):
        data = value.read()
        if not isinstance(data, bytes):
            raise TypeError(f"images[{index}]: open the file in binary mode ('rb')")
        name = getattr(value, "name", None)
        return (os.path.basename(name) if isinstance(name, str) else f"image-{index}"), data
    if _is_pil(value):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")  # lossless, and a format the service takes
        return f"image-{index}.png", buffer.getvalue()
    raise TypeError(
        f"images[{index}] is a {type(value).__name__}: give bytes, a path, a binary file "
        "object or a PIL image"
    )


def file_fields(field: str, images: list[ImageLike], start: int = 0) -> list[FileField]:
    """Multipart file fields for `images`, read now (so that a retry resends the same bytes)."""
    fields = []
    for i, image in enumerate(images, start):
        name, data = read_image(image, i)
        fields.append((field, (name, data, "application/octet-stream")))
    return fields
