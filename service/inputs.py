"""Request bodies → named image bytes, decoded pixels and parameters, or a clear 4xx.

Images arrive as multipart `files`, JSON base64 strings, or (for one image) a raw body with
`Content-Type: image/*`. Each is decoded before it joins a batch, so one bad image fails only
its own request, with its name in the message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from starlette.requests import Request

from service import strict_json
from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType, image_error
from service.imaging import ImageError, InputSpec, decode_opened, open_image
from service.multipart import FilePart, Form, MalformedForm, parse_form

INLINE_DECODE_BYTES = 64 * 1024  # smaller files decode on the event loop; larger in a thread


@dataclass(frozen=True)
class NamedImage:
    name: str  # how error messages refer to it: files[0] (shirt.png), images[2], body
    data: bytes


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_form(request: Request, *, max_files: int) -> Form:
    try:
        return await parse_form(
            request.headers.get("content-type", ""),
            request.stream(),
            max_files=max_files,
            max_fields=max_files * 2 + 16,
        )
    except MalformedForm as exc:
        raise InvalidInput(f"malformed multipart body: {exc}") from exc


async def read_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        value = strict_json.loads(body, "body")
    except strict_json.InvalidJSON as exc:
        raise InvalidInput(str(exc)) from exc
    if not isinstance(value, dict):
        raise InvalidInput("JSON body must be an object")
    return value


def form_files(form: Form, field: str) -> list[NamedImage]:
    images = []
    for i, item in enumerate(form.getlist(field)):
        if not isinstance(item, FilePart):
            raise InvalidInput(f"{field}[{i}] must be a file upload, not a text field")
        images.append(NamedImage(f"{field}[{i}] ({item.filename or 'unnamed'})", item.data))
    return images


SEND_BASE64 = "send an image file as base64, or as a data URI (data:image/png;base64,…)"


def b64_image(value: Any, name: str) -> NamedImage:
    """An image file in base64, bare or as a data URI. A URL is refused and never fetched: the
    service makes no requests on a caller's behalf (no SSRF)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string: {SEND_BASE64}")
    if value.startswith("data:"):  # data URIs, as browsers and OpenAI-style clients make them
        header, comma, value = value.partition(",")
        if not comma or not header.endswith(";base64"):
            raise InvalidInput(f"{name} is a data URI without base64 data: {SEND_BASE64}")
    elif value[:8].lower().startswith(("http://", "https://")):
        raise InvalidInput(
            f"{name} is a URL, and this service fetches no URLs: {SEND_BASE64}",
            code="url_not_supported",
        )
    try:
        return NamedImage(name, base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{name} is not valid base64 ({exc}): {SEND_BASE64}") from exc


def count_between(items: list, what: str, low: int, high: int) -> None:
    if not low <= len(items) <= high:
        raise InvalidInput(f"send {low} to {high} {what}, not {len(items)}")


async def read_images(
    request: Request, *, min_count: int, max_count: int, allow_raw: bool
) -> list[NamedImage]:
    """Multipart `files`, JSON {"images": [base64…]}, or one raw image body."""
    kind = content_type(request)
    if kind == "multipart/form-data":
        images = form_files(await read_form(request, max_files=max_count + 1), "files")
    elif kind == "application/json":
        items = (await read_json(request)).get("images")
        if not isinstance(items, list):
            raise InvalidInput('JSON body needs "images": a list of base64 strings')
        count_between(items, "images", min_count, max_count)
        images = [b64_image(v, f"images[{i}]") for i, v in enumerate(items)]
    elif allow_raw and kind.startswith("image/"):
        images = [NamedImage("body", await request.body())]
    else:
        accepted = "multipart/form-data, application/json" + (" or image/*" if allow_raw else "")
        raise UnsupportedMediaType(f"Content-Type {kind or 'missing'}: send {accepted}")
    count_between(images, "images", min_count, max_count)
    return images


async def decode_all(
    images: list[NamedImage], spec: InputSpec, *, max_pixels: int, max_request_pixels: int
) -> list[np.ndarray]:
    """Decode every image or raise the 4xx of the first bad one (named). Every image's headers
    are judged first, so a request over its pixel budget decodes nothing."""

    def decode_every() -> list[np.ndarray]:
        opened: list[Image.Image] = []  # each opened once: headers judged, nothing decoded
        try:
            total = 0
            for image in images:
                with _named(image):
                    header, pixels = open_image(image.data, max_pixels)
                opened.append(header)
                total += pixels
            if total > max_request_pixels:
                raise PayloadTooLarge(
                    f"the {len(images)} images decode to {total} pixels together; the budget "
                    f"is {max_request_pixels} pixels per request: send fewer or smaller images"
                )
            decoded = []
            for image, header in zip(images, opened, strict=True):
                with _named(image):
                    decoded.append(decode_opened(header, spec))
            return decoded
        finally:
            for header in opened:
                header.close()

    if sum(len(i.data) for i in images) <= INLINE_DECODE_BYTES:
        return decode_every()
    return await asyncio.to_thread(decode_every)


class _named:
    """An image's ImageError as the API error naming it. A class, not @contextmanager: a
    generator per image per step cost /embed's event loop a few µs each."""

    def __init__(self, image: NamedImage) -> None:
        self.image = image

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, ImageError):
            raise image_error(exc, self.image.name) from exc


def parse_k(value: Any, *, default: int, limit: int) -> int:
    if value is None or value == "":
        return default
    try:
        k = int(value)
        if isinstance(value, float | bool) or str(k) != str(value).strip():
            raise ValueError
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"k must be a whole number, not {value!r}") from exc
    if not 1 <= k <= limit:
        raise InvalidInput(f"k must be between 1 and {limit}, not {k}")
    return k


def parse_dimensions(value: int | str | None, dim: int) -> int | None:
    """`dimensions` (1..D), a number or the query string's text: serve the vectors' first
    components, renormalised; None: all."""
    if not isinstance(value, str):
        dimensions = value
    else:
        try:
            dimensions = int(value)
        except ValueError:
            raise InvalidInput(
                f"dimensions must be a whole number, not {value!r}", param="dimensions"
            ) from None
    if dimensions is not None and not 1 <= dimensions <= dim:
        raise InvalidInput(
            f"dimensions must be between 1 and the model's {dim}, not {dimensions}",
            param="dimensions",
        )
    return None if dimensions == dim else dimensions


def parse_vector(value: Any, dim: int) -> np.ndarray:
    if not isinstance(value, list) or len(value) != dim:
        got = len(value) if isinstance(value, list) else type(value).__name__
        raise InvalidInput(
            f"vector must be a list of {dim} numbers (got {got}): search takes full-size "
            "vectors only, as /embed returns them without dimensions"
        )
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        raise InvalidInput("vector must hold numbers only")
    vector = np.asarray(value, dtype=np.float64)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0:
        raise InvalidInput("vector must be finite and non-zero")
    return (vector / norm).astype(np.float32)
