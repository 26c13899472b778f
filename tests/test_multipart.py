"""service/multipart.py: forms read into memory, with the same parts and limits as Starlette's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser

from service.multipart import MAX_FIELD_BYTES, FilePart, Form, MalformedForm, parse_form


def encoded(data: dict, files: list) -> tuple[str, bytes]:
    """A body as a real client (httpx) encodes it: multipart, so with a file at least."""
    files = files or [("attachment", ("x.bin", b"x"))]
    request = httpx.Request("POST", "http://x/", data=data, files=files)
    return request.headers["content-type"], request.read()


async def chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def parse(content_type: str, body: bytes, *, size: int = 1 << 20, **limits: int) -> Form:
    limits = {"max_files": 10, "max_fields": 10, **limits}
    return asyncio.run(parse_form(content_type, chunks(body, size), **limits))  # type: ignore[arg-type]


def starlette_items(content_type: str, body: bytes) -> list[tuple[str, object]]:
    async def read() -> list[tuple[str, object]]:
        parser = MultiPartParser(Headers({"content-type": content_type}), chunks(body, 1 << 20))
        items = []
        for name, value in (await parser.parse()).multi_items():
            if isinstance(value, UploadFile):
                value = FilePart(value.filename or "", await value.read())
            items.append((name, value))
        return items

    return asyncio.run(read())


def test_fields_and_files_come_out_as_starlettes_parser_gives_them_in_any_chunking() -> None:
    content_type, body = encoded(
        {"k": "5", "metadata": ['{"colour": "rot"}', "ünïcode"]},
        [
            ("files", ("a.png", b"\x89PNG" + bytes(range(256)) * 40, "image/png")),
            ("files", ("b c.png", b"second\r\n--not-a-boundary", "image/png")),
        ],
    )
    expected = starlette_items(content_type, body)
    for size in (1, 7, 100, len(body)):
        assert parse(content_type, body, size=size).multi_items() == expected
    form = parse(content_type, body)
    assert form.get("k") == "5" and form.get("missing") is None
    assert form.getlist("files")[1] == FilePart("b c.png", b"second\r\n--not-a-boundary")


def test_the_charset_of_the_request_decodes_names_and_fields() -> None:
    content_type, body = encoded({"note": "café"}, [])
    latin = body.replace("café".encode(), "café".encode("latin-1"))
    assert parse(content_type + "; charset=latin-1", latin).get("note") == "café"
    assert parse(content_type, latin).get("note") == "café"  # not utf-8: read as latin-1


@pytest.mark.parametrize(
    ("limits", "data", "files", "message"),
    [
        ({"max_files": 1}, {}, [("files", ("a", b"1")), ("files", ("b", b"2"))], "Too many files"),
        ({"max_fields": 1}, {"a": "1", "b": "2"}, [], "Too many fields"),
        ({}, {"big": "x" * (MAX_FIELD_BYTES + 1)}, [], "Part exceeded maximum size"),
    ],
)
def test_limits_refuse_the_form(limits: dict, data: dict, files: list, message: str) -> None:
    content_type, body = encoded(data, files)
    with pytest.raises(MalformedForm, match=message):
        parse(content_type, body, **limits)


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("multipart/form-data", b"--xx\r\n\r\n--xx--\r\n", "Missing boundary"),
        ("multipart/form-data; boundary=xx", b"--xx\r\n[[]]--xx--\r\n", "Invalid multipart"),
        (
            "multipart/form-data; boundary=xx",
            b'--xx\r\nContent-Disposition: form-data; filename="a"\r\n\r\n1\r\n--xx--\r\n',
            '"name" must be provided',
        ),
    ],
)
def test_malformed_bodies_are_refused(content_type: str, body: bytes, message: str) -> None:
    with pytest.raises(MalformedForm, match=message):
        parse(content_type, body)
