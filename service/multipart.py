"""multipart/form-data bodies → text fields and files in memory, by python-multipart's parser.

Starlette's form parser (`request.form()`) spools every file into a SpooledTemporaryFile behind
an UploadFile, which the routes then read back whole: reading one small image's request took
97 µs that way and takes 63 µs this way (BENCHMARKS.md §3). The routes want each file's bytes
at once, so this reads the parts straight into bytes, with Starlette's rules: names and
filenames from Content-Disposition, the request's charset, at most `max_files` files and
`max_fields` text fields of at most MAX_FIELD_BYTES each. The body is already capped by the
service's body limit (BodyLimitMiddleware) as it streams in.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FIELD_BYTES = 1024 * 1024  # a text field (Starlette's max_part_size)


class MalformedForm(ValueError):
    """The body is not the multipart/form-data its Content-Type says, or passes a limit."""


@dataclass(frozen=True)
class FilePart:
    filename: str
    data: bytes


@dataclass
class _Part:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    name: str = ""
    filename: str | None = None  # None: a text field


class Form:
    """The parts of a form by field name, in order: text fields as str, files as FilePart."""

    def __init__(self, items: list[tuple[str, str | FilePart]]) -> None:
        self._items = items

    def multi_items(self) -> list[tuple[str, str | FilePart]]:
        return list(self._items)

    def getlist(self, name: str) -> list[str | FilePart]:
        return [value for key, value in self._items if key == name]

    def get(self, name: str) -> str | FilePart | None:
        values = self.getlist(name)
        return values[0] if values else None


def _decode(value: bytes, charset: str) -> str:
    try:
        return value.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return value.decode("latin-1")


async def parse_form(
    content_type: str, body: AsyncIterator[bytes], *, max_files: int, max_fields: int
) -> Form:
    """The form in `body`, streamed; raises MalformedForm for anything it cannot accept."""
    _, params = parse_options_header(content_type)
    charset_name = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset_name).name
    except LookupError:
        charset = "latin-1"
    if b"boundary" not in params:
        raise MalformedForm("Missing boundary in multipart.")
    items: list[tuple[str, str | FilePart]] = []
    counts = {"files": 0, "fields": 0}
    part, header_name, header_value = _Part(), b"", b""

    def on_part_begin() -> None:
        nonlocal part
        part = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        nonlocal header_name
        header_name += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        nonlocal header_value
        header_value += data[start:end]

    def on_header_end() -> None:
        nonlocal header_name, header_value
        part.headers.append((header_name.lower(), header_value))
        header_name, header_value = b"", b""

    def on_headers_finished() -> None:
        disposition = next((v for k, v in part.headers if k == b"content-disposition"), b"")
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            raise MalformedForm('The Content-Disposition header field "name" must be provided.')
        part.name = _decode(options[b"name"], charset)
        kind, limit = ("files", max_files) if b"filename" in options else ("fields", max_fields)
        counts[kind] += 1
        if counts[kind] > limit:
            raise MalformedForm(f"Too many {kind}. Maximum number of {kind} is {limit}.")
        if b"filename" in options:
            part.filename = _decode(options[b"filename"], charset)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part.size += end - start
        if part.filename is None and part.size > MAX_FIELD_BYTES:
            raise MalformedForm(f"Part exceeded maximum size of {MAX_FIELD_BYTES // 1024}KB.")
        part.chunks.append(data[start:end])

    def on_part_end() -> None:
        data = b"".join(part.chunks)
        if part.filename is None:
            items.append((part.name, _decode(data, charset)))
        else:
            items.append((part.name, FilePart(part.filename, data)))

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise MalformedForm("Invalid multipart data.") from exc
    return Form(items)
