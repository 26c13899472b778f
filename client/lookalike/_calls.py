"""Everything Client and AsyncClient share: each API call as a `Call` (the request to send and
how to read its answer), the retry policy, and the upload plan. The two clients differ only in
how they send a request and how they wait."""

from __future__ import annotations

import datetime as dt
import json
import random
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from lookalike._errors import ConnectionFailed, error_for
from lookalike._images import ImageLike, as_list, file_fields
from lookalike._types import (
    CollectionInfo,
    CreatedCollection,
    Embeddings,
    Hit,
    ImageInfo,
    KeptModel,
    Limits,
    ModelInfo,
    Page,
    ServiceInfo,
    Similarity,
    Uploaded,
    from_json,
)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 5
INITIAL_DELAY_S = 0.5
MAX_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 60.0
JITTER = 0.25  # each wait is stretched by up to a quarter, so that waiting callers spread out
DEFAULT_BATCH_SIZE = 64
DEFAULT_COLLECTION = "default"  # the service's unprefixed gallery routes

Progress = Callable[[int, int], None]
Filter = Mapping[str, Any]  # MongoDB-style, on the images' metadata (README: Filters)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call: the request, how to read a success, and whether to repeat it is safe."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    json: Any = None
    files: list[Any] | None = None
    data: dict[str, Any] | None = None
    retry: bool = True  # False: an upload without ids (a repeat would add it twice), a probe
    accept: frozenset[int] = frozenset()  # error statuses that `parse` reads instead
    # After an attempt whose answer was lost, a repeat finds done what that attempt did: the
    # statuses that say so, each read as the answer the lost attempt had (DELETE: 404 as 204).
    redone: Mapping[int, int] = field(default_factory=dict)

    def request_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"params": self.params, "files": self.files, "data": self.data}
        if self.json is not None:
            args["json"] = self.json
        return args

    def result(self, outcome: httpx.Response | httpx.TransportError, *, lost: bool = False) -> T:
        """The parsed answer, or the exception for an error answer or for no answer. `lost`:
        an earlier attempt may have done the call, but its answer never came."""
        if isinstance(outcome, httpx.TransportError):
            message = f"{type(outcome).__name__}: {outcome}" if str(outcome) else repr(outcome)
            raise ConnectionFailed(message, code="connection_error") from outcome
        if lost and outcome.status_code in self.redone:
            status = self.redone[outcome.status_code]
            outcome = httpx.Response(status, content=outcome.content, request=outcome.request)
        if outcome.is_error and outcome.status_code not in self.accept:
            raise error_for(outcome)
        return self.parse(outcome)


# Failures before the request left: the service cannot have acted on it.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class Retries:
    """When to try a call again, and after how long: 503s and failed connections, up to
    `max_retries` times, with jittered exponential backoff that waits at least Retry-After.
    `lost`: an attempt that was retried may have reached the service, its answer lost (a 503
    is an answer: the service did not do it)."""

    def __init__(self, max_retries: int, call: Call[Any]) -> None:
        self.left = max_retries if call.retry else 0
        self.attempt = 0
        self.lost = False

    def delay(self, outcome: httpx.Response | httpx.TransportError) -> float | None:
        """Seconds to wait before the next try; None: this outcome is final."""
        if self.left <= 0:
            return None
        if isinstance(outcome, httpx.Response):
            if outcome.status_code != 503:
                return None
            wait = retry_after(outcome.headers) or backoff(self.attempt)
        else:
            wait = backoff(self.attempt)
            self.lost |= not isinstance(outcome, NOT_SENT)
        self.left -= 1
        self.attempt += 1
        return wait * (1 + JITTER * random.random())


def backoff(attempt: int) -> float:
    return float(min(INITIAL_DELAY_S * 2**attempt, MAX_DELAY_S))


def retry_after(headers: httpx.Headers) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), when sensible."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            date = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (date - dt.datetime.now(dt.timezone.utc)).total_seconds()
    return seconds if 0 < seconds <= MAX_RETRY_AFTER_S else None


def _segment(value: str) -> str:
    """One path segment. "." and ".." are percent-encoded too: left bare, httpx would resolve
    them (`/collections/../images` is `/images`, the collection `default`'s)."""
    quoted = quote(str(value), safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _prefix(collection: str) -> str:
    """Where a collection's gallery routes live: the unprefixed ones are `default`'s."""
    return "" if collection == DEFAULT_COLLECTION else _collection_path(collection)


def _collection_path(name: str) -> str:
    return "/collections/" + _segment(name)


def _id_path(collection: str, image_id: str) -> str:
    return _prefix(collection) + "/images/" + _segment(image_id)


def embed(images: ImageLike | Iterable[ImageLike], dimensions: int | None) -> Call[Embeddings]:
    params = {"dimensions": dimensions} if dimensions is not None else None
    files = file_fields("files", as_list(images))
    return Call("POST", "/embed", lambda r: from_json(Embeddings, r.json()), params, files=files)


def similarity(images: ImageLike | Iterable[ImageLike]) -> Call[Similarity]:
    files = file_fields("files", as_list(images))
    return Call("POST", "/similarity", lambda r: from_json(Similarity, r.json()), files=files)


def _hits(response: httpx.Response) -> list[Hit]:
    return [from_json(Hit, hit) for hit in response.json()["results"]]


def nearest(
    collection: str,
    image: ImageLike | None,
    image_id: str | None,
    vector: Sequence[float] | None,
    k: int,
    where: Filter | None,
    model: str | None = None,
) -> Call[list[Hit]]:
    given = [
        name
        for name, v in (("image", image), ("id", image_id), ("vector", vector))
        if v is not None
    ]
    if len(given) != 1:
        raise TypeError(f"give exactly one of image, id or vector (got {given or 'none'})")
    if model is not None and vector is None:
        raise TypeError("model names the model that made a vector: give it with vector")
    path = _prefix(collection) + "/nearest"
    if image is not None:
        data = {"k": str(k)}
        if where is not None:
            data["filter"] = json.dumps(dict(where))
        return Call("POST", path, _hits, files=file_fields("file", [image]), data=data)
    body: dict[str, Any] = {"k": k}
    if image_id is not None:
        body["id"] = image_id
    else:
        assert vector is not None
        body["vector"] = [float(x) for x in vector]
        if model is not None:
            body["model"] = model
    if where is not None:
        body["filter"] = dict(where)
    return Call("POST", path, _hits, json=body)


def get(collection: str, image_id: str) -> Call[ImageInfo]:
    return Call("GET", _id_path(collection, image_id), lambda r: from_json(ImageInfo, r.json()))


def content(collection: str, image_id: str) -> Call[bytes]:
    return Call("GET", _id_path(collection, image_id) + "/content", lambda r: r.content)


def delete(collection: str, image_id: str) -> Call[None]:
    return Call("DELETE", _id_path(collection, image_id), lambda r: None, redone={404: 204})


def page(collection: str, cursor: str | None, page_size: int, where: Filter | None) -> Call[Page]:
    params: dict[str, Any] = {"limit": page_size}
    if cursor is not None:
        params["cursor"] = cursor
    if where is not None:
        params["filter"] = json.dumps(dict(where))

    def parse(response: httpx.Response) -> Page:
        body = response.json()
        items = [from_json(ImageInfo, item) for item in body["items"]]
        return Page(items, body.get("next_cursor"))

    return Call("GET", _prefix(collection) + "/images", parse, params)


def _collection(response: httpx.Response) -> CollectionInfo:
    return from_json(CollectionInfo, response.json())


def collections() -> Call[list[CollectionInfo]]:
    return Call(
        "GET",
        "/collections",
        lambda r: [from_json(CollectionInfo, item) for item in r.json()["items"]],
    )


def get_collection(name: str) -> Call[CollectionInfo]:
    return Call("GET", _collection_path(name), _collection)


def create_collection(name: str) -> Call[CreatedCollection]:
    # PUT: a repeat finds it made and answers 200, so retrying is safe.
    def parse(response: httpx.Response) -> CreatedCollection:
        created = response.status_code == 201
        return from_json(CreatedCollection, {**response.json(), "created": created})

    return Call("PUT", _collection_path(name), parse, redone={200: 201})


def delete_collection(name: str) -> Call[None]:
    return Call("DELETE", _collection_path(name), lambda r: None, redone={404: 204})


def info() -> Call[ServiceInfo]:
    def parse(response: httpx.Response) -> ServiceInfo:
        body = response.json()
        return ServiceInfo(
            model=from_json(ModelInfo, body["model"]),
            auth_required=bool(body["auth_required"]),
            public_reads=bool(body.get("public_reads", True)),  # older services: reads open
            limits=from_json(Limits, body["limits"]),
            kept_models=tuple(from_json(KeptModel, m) for m in body.get("kept_models", ())),
        )

    return Call("GET", "/info", parse)


def ready() -> Call[bool]:
    # A probe: not retried, and a 503 (not ready) is an answer, not an error.
    return Call(
        "GET", "/readyz", lambda r: r.status_code == 200, retry=False, accept=frozenset({503})
    )


def _uploaded(response: httpx.Response) -> list[Uploaded]:
    return [from_json(Uploaded, item) for item in response.json()["items"]]


@dataclass
class Upload:
    """An upload in batches: the calls to make, one per batch, and the items they return.
    A batch is retried only when it names its ids: then a repeat replaces, never duplicates."""

    collection: str
    images: list[ImageLike]
    ids: list[str] | None
    metadata: list[Mapping[str, Any]] | None
    batch_size: int
    progress: Progress | None
    items: list[Uploaded] = field(default_factory=list)

    @classmethod
    def plan(
        cls,
        collection: str,
        images: ImageLike | Iterable[ImageLike],
        ids: Iterable[str] | None,
        metadata: Iterable[Mapping[str, Any]] | None,
        batch_size: int,
        progress: bool | Progress | None,
    ) -> Upload:
        listed = as_list(images)
        id_list = [str(i) for i in ids] if ids is not None else None
        meta_list = list(metadata) if metadata is not None else None
        for name, values in (("ids", id_list), ("metadata", meta_list)):
            if values is not None and len(values) != len(listed):
                raise ValueError(f"give one of {name} per image: {len(values)} for {len(listed)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        report = stderr_progress if progress is True else (progress or None)
        return cls(collection, listed, id_list, meta_list, batch_size, report)

    def calls(self) -> Iterator[Call[list[Uploaded]]]:
        """One call per batch; its files are read only when its turn comes."""
        for start in range(0, len(self.images), self.batch_size):
            stop = start + self.batch_size
            data: dict[str, Any] = {}
            if self.ids is not None:
                data["ids"] = self.ids[start:stop]
            if self.metadata is not None:
                data["metadata"] = [json.dumps(dict(m)) for m in self.metadata[start:stop]]
            files = file_fields("files", self.images[start:stop], start)
            path = _prefix(self.collection) + "/images"
            yield Call("POST", path, _uploaded, files=files, data=data, retry=self.ids is not None)

    def done(self, items: list[Uploaded]) -> None:
        self.items.extend(items)
        if self.progress:
            self.progress(len(self.items), len(self.images))


def stderr_progress(done: int, total: int) -> None:
    """progress=True: one line on stderr, redrawn in place."""
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    print(
        f"\ruploaded [{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
        end=end,
        file=sys.stderr,
        flush=True,
    )
