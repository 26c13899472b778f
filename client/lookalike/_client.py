"""Client and AsyncClient: one surface, the same names and arguments. Each method builds its
call in `_calls` and sends it; only sending and waiting differ between the two."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from lookalike import _calls
from lookalike._calls import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    Call,
    Progress,
    Retries,
    Upload,
)
from lookalike._images import ImageLike
from lookalike._types import Embeddings, Hit, ImageInfo, ServiceInfo, Similarity, Uploaded

__version__ = "0.1.0"

T = TypeVar("T")


class _Options:
    """What both clients are configured with."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float | httpx.Timeout,
        max_retries: int,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, not {max_retries}")
        self.max_retries = max_retries
        key = api_key if api_key is not None else os.environ.get("LOOKALIKE_API_KEY")
        self.http_args: dict[str, Any] = {
            "base_url": base_url,
            "timeout": timeout,
            "headers": {
                "User-Agent": f"lookalike-python/{__version__}",
                **({"Authorization": f"Bearer {key}"} if key else {}),
            },
        }


class Client:
    """The lookalike service, over HTTP.

        with Client("http://127.0.0.1:8000", api_key="...") as client:
            client.upload(["shirt.png"], ids=["shirt"])
            client.nearest("query.png", k=5)

    `api_key` (default: $LOOKALIKE_API_KEY) is needed for writes only. A 503 or a failed
    connection is retried up to `max_retries` times with jittered exponential backoff that
    honours Retry-After; an upload only when it names its ids. Errors raise a LookalikeError.
    A Client may be shared by threads.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        options = _Options(base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self.max_retries = options.max_retries
        self._http = httpx.Client(**options.http_args)

    def _send(self, call: Call[T]) -> T:
        retries = Retries(self.max_retries, call)
        while True:
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = self._http.request(call.method, call.path, **call.request_args())
            except httpx.TransportError as exc:
                outcome = exc
            delay = retries.delay(outcome)
            if delay is None:
                return call.result(outcome)
            time.sleep(delay)

    def embed(
        self, images: ImageLike | Iterable[ImageLike], *, dimensions: int | None = None
    ) -> Embeddings:
        """Unit vectors for one image or several, in order; `dimensions`: the first n
        components only, renormalised (a smaller vector that /nearest does not take)."""
        return self._send(_calls.embed(images, dimensions))

    def similarity(self, images: Iterable[ImageLike]) -> Similarity:
        """The cosine-score matrix of two or more images."""
        return self._send(_calls.similarity(images))

    def nearest(
        self,
        image: ImageLike | None = None,
        *,
        id: str | None = None,
        vector: Sequence[float] | None = None,
        k: int = 10,
    ) -> list[Hit]:
        """The k gallery images most like an image, a gallery id or a full-size vector."""
        return self._send(_calls.nearest(image, id, vector, k))

    def upload(
        self,
        images: ImageLike | Iterable[ImageLike],
        ids: Iterable[str] | None = None,
        metadata: Iterable[Mapping[str, Any]] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool | Progress | None = None,
    ) -> list[Uploaded]:
        """Add images to the gallery in batches; an id that exists is replaced. `progress`:
        True for a bar on stderr, or a function called with (done, total) after each batch."""
        upload = Upload.plan(images, ids, metadata, batch_size, progress)
        for call in upload.calls():
            upload.done(self._send(call))
        return upload.items

    def get(self, id: str) -> ImageInfo:
        return self._send(_calls.get(id))

    def content(self, id: str) -> bytes:
        """The original bytes, as uploaded."""
        return self._send(_calls.content(id))

    def delete(self, id: str) -> None:
        self._send(_calls.delete(id))

    def images(self, *, page_size: int = 100) -> Iterator[ImageInfo]:
        """Every gallery image, in upload order, fetched a page at a time."""
        cursor: str | None = None
        while True:
            page = self._send(_calls.page(cursor, page_size))
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def info(self) -> ServiceInfo:
        """The served model, whether writes need a key, and the limits."""
        return self._send(_calls.info())

    def ready(self) -> bool:
        """True once the service answers requests (its model and index loaded)."""
        return self._send(_calls.ready())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncClient:
    """Client's surface for asyncio: the same methods, awaited; `images()` is async-iterated.

    async with AsyncClient("http://127.0.0.1:8000") as client:
        hits = await client.nearest("query.png", k=5)
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        options = _Options(base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self.max_retries = options.max_retries
        self._http = httpx.AsyncClient(**options.http_args)

    async def _send(self, call: Call[T]) -> T:
        retries = Retries(self.max_retries, call)
        while True:
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = await self._http.request(call.method, call.path, **call.request_args())
            except httpx.TransportError as exc:
                outcome = exc
            delay = retries.delay(outcome)
            if delay is None:
                return call.result(outcome)
            await asyncio.sleep(delay)

    async def embed(
        self, images: ImageLike | Iterable[ImageLike], *, dimensions: int | None = None
    ) -> Embeddings:
        return await self._send(_calls.embed(images, dimensions))

    async def similarity(self, images: Iterable[ImageLike]) -> Similarity:
        return await self._send(_calls.similarity(images))

    async def nearest(
        self,
        image: ImageLike | None = None,
        *,
        id: str | None = None,
        vector: Sequence[float] | None = None,
        k: int = 10,
    ) -> list[Hit]:
        return await self._send(_calls.nearest(image, id, vector, k))

    async def upload(
        self,
        images: ImageLike | Iterable[ImageLike],
        ids: Iterable[str] | None = None,
        metadata: Iterable[Mapping[str, Any]] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool | Progress | None = None,
    ) -> list[Uploaded]:
        upload = Upload.plan(images, ids, metadata, batch_size, progress)
        for call in upload.calls():
            upload.done(await self._send(call))
        return upload.items

    async def get(self, id: str) -> ImageInfo:
        return await self._send(_calls.get(id))

    async def content(self, id: str) -> bytes:
        return await self._send(_calls.content(id))

    async def delete(self, id: str) -> None:
        await self._send(_calls.delete(id))

    async def images(self, *, page_size: int = 100) -> AsyncIterator[ImageInfo]:
        cursor: str | None = None
        while True:
            page = await self._send(_calls.page(cursor, page_size))
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def info(self) -> ServiceInfo:
        return await self._send(_calls.info())

    async def ready(self) -> bool:
        return await self._send(_calls.ready())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
