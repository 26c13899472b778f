"""Client and AsyncClient: one surface, the same names and arguments. Each method builds its
call in `_calls` and sends it; only sending and waiting differ between the two.

The gallery methods (upload, nearest, get, content, delete, images) live in `_Gallery` and
`_AsyncGallery`, which target a collection: a Client is the collection `default`, and
`client.collection(name)` is a `Collection` view that sends through the same client."""

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
    DEFAULT_COLLECTION,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    Call,
    Filter,
    Progress,
    Retries,
    Upload,
)
from lookalike._images import ImageLike
from lookalike._types import (
    CollectionInfo,
    CreatedCollection,
    Embeddings,
    Hit,
    ImageInfo,
    ServiceInfo,
    Similarity,
    Uploaded,
)

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


class _Gallery:
    """The gallery methods, on the collection `_collection`: Client's and Collection's."""

    _collection = DEFAULT_COLLECTION

    def _send(self, call: Call[T]) -> T:
        raise NotImplementedError

    def nearest(
        self,
        image: ImageLike | None = None,
        *,
        id: str | None = None,
        vector: Sequence[float] | None = None,
        k: int = 10,
        filter: Filter | None = None,
        model: str | None = None,
    ) -> list[Hit]:
        """The k images most like an image, an id of this collection or a full-size vector;
        `filter` (MongoDB-style, on metadata): the k best among the images that match it.
        `model`, with `vector`: the version of the model that made it (Embeddings.model); the
        service raises Conflict (code "model_mismatch") when it serves another."""
        return self._send(_calls.nearest(self._collection, image, id, vector, k, filter, model))

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
        upload = Upload.plan(self._collection, images, ids, metadata, batch_size, progress)
        for call in upload.calls():
            upload.done(self._send(call))
        return upload.items

    def get(self, id: str) -> ImageInfo:
        return self._send(_calls.get(self._collection, id))

    def content(self, id: str) -> bytes:
        """The original bytes, as uploaded."""
        return self._send(_calls.content(self._collection, id))

    def delete(self, id: str) -> None:
        """Delete the image; NotFound when there is none with this id. A retry that finds it
        gone after a lost answer is a success: the lost attempt deleted it."""
        self._send(_calls.delete(self._collection, id))

    def images(self, *, page_size: int = 100, filter: Filter | None = None) -> Iterator[ImageInfo]:
        """Every image, fetched a page at a time: in upload order, or with a `filter`, only
        those that match, in order of their last change."""
        cursor: str | None = None
        while True:
            page = self._send(_calls.page(self._collection, cursor, page_size, filter))
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


class Client(_Gallery):
    """The lookalike service, over HTTP.

        with Client("http://127.0.0.1:8000", api_key="...") as client:
            client.upload(["shirt.png"], ids=["shirt"])
            client.nearest("query.png", k=5)
            shoes = client.collection("shoes")  # the same methods, in another collection

    The gallery methods act on the collection `default`. `api_key` (default:
    $LOOKALIKE_API_KEY) is sent with every request, as `Authorization: Bearer`. A 503 or a
    failed connection is retried up to `max_retries` times with jittered exponential backoff
    that honours Retry-After; an upload only when it names its ids. Errors raise a
    LookalikeError. A Client may be shared by threads.
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
                return call.result(outcome, lost=retries.lost)
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

    def collection(self, name: str) -> Collection:
        """The gallery methods on the collection `name` (no request: create it first)."""
        return Collection(self, name)

    def collections(self) -> list[CollectionInfo]:
        """Every collection, `default` included, with its image count."""
        return self._send(_calls.collections())

    def get_collection(self, name: str) -> CollectionInfo:
        return self._send(_calls.get_collection(name))

    def create_collection(self, name: str) -> CreatedCollection:
        """Create the collection, or leave it as it is when it exists: `.created` says which
        (a name is 1–64 of A–Z a–z 0–9 _ -, starting with a letter or digit)."""
        return self._send(_calls.create_collection(name))

    def delete_collection(self, name: str) -> None:
        """Delete the collection with all its images; `default` cannot be (Conflict). Like
        `delete`: NotFound when there is none, but not on a retry after a lost answer."""
        self._send(_calls.delete_collection(name))

    def info(self) -> ServiceInfo:
        """The served model, whether it needs a key, whether reads need none, the limits."""
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


class Collection(_Gallery):
    """One collection of a Client's service (`client.collection(name)`): the gallery methods,
    sent through that client."""

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self._collection = name

    @property
    def name(self) -> str:
        return self._collection

    def _send(self, call: Call[T]) -> T:
        return self._client._send(call)

    def __repr__(self) -> str:
        return f"Collection({self.name!r})"


class _AsyncGallery:
    """_Gallery's methods, awaited."""

    _collection = DEFAULT_COLLECTION

    async def _send(self, call: Call[T]) -> T:
        raise NotImplementedError

    async def nearest(
        self,
        image: ImageLike | None = None,
        *,
        id: str | None = None,
        vector: Sequence[float] | None = None,
        k: int = 10,
        filter: Filter | None = None,
        model: str | None = None,
    ) -> list[Hit]:
        call = _calls.nearest(self._collection, image, id, vector, k, filter, model)
        return await self._send(call)

    async def upload(
        self,
        images: ImageLike | Iterable[ImageLike],
        ids: Iterable[str] | None = None,
        metadata: Iterable[Mapping[str, Any]] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool | Progress | None = None,
    ) -> list[Uploaded]:
        upload = Upload.plan(self._collection, images, ids, metadata, batch_size, progress)
        for call in upload.calls():
            upload.done(await self._send(call))
        return upload.items

    async def get(self, id: str) -> ImageInfo:
        return await self._send(_calls.get(self._collection, id))

    async def content(self, id: str) -> bytes:
        return await self._send(_calls.content(self._collection, id))

    async def delete(self, id: str) -> None:
        await self._send(_calls.delete(self._collection, id))

    async def images(
        self, *, page_size: int = 100, filter: Filter | None = None
    ) -> AsyncIterator[ImageInfo]:
        cursor: str | None = None
        while True:
            page = await self._send(_calls.page(self._collection, cursor, page_size, filter))
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


class AsyncClient(_AsyncGallery):
    """Client's surface for asyncio: the same methods, awaited; `images()` is async-iterated,
    and `collection(name)` is an AsyncCollection.

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
                return call.result(outcome, lost=retries.lost)
            await asyncio.sleep(delay)

    async def embed(
        self, images: ImageLike | Iterable[ImageLike], *, dimensions: int | None = None
    ) -> Embeddings:
        return await self._send(_calls.embed(images, dimensions))

    async def similarity(self, images: Iterable[ImageLike]) -> Similarity:
        return await self._send(_calls.similarity(images))

    def collection(self, name: str) -> AsyncCollection:
        return AsyncCollection(self, name)

    async def collections(self) -> list[CollectionInfo]:
        return await self._send(_calls.collections())

    async def get_collection(self, name: str) -> CollectionInfo:
        return await self._send(_calls.get_collection(name))

    async def create_collection(self, name: str) -> CreatedCollection:
        return await self._send(_calls.create_collection(name))

    async def delete_collection(self, name: str) -> None:
        await self._send(_calls.delete_collection(name))

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


class AsyncCollection(_AsyncGallery):
    """Collection for AsyncClient (`client.collection(name)`)."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        self._client = client
        self._collection = name

    @property
    def name(self) -> str:
        return self._collection

    async def _send(self, call: Call[T]) -> T:
        return await self._client._send(call)

    def __repr__(self) -> str:
        return f"AsyncCollection({self.name!r})"
