"""What routes depend on: the worker's runtime, the gallery once it is ready, the collection a
route names, the write key, and the response helpers they share."""

from __future__ import annotations

import hmac
import re
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import InvalidInput, Unauthorized, Unavailable
from service.gallery import Gallery
from service.runtime import Runtime
from service.schemas import ErrorResponse
from service.store import DEFAULT_COLLECTION

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 404, 409, 413, 415, 422, 503, 507)
}

# Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in a thread
# pool, one thread hop per dependency per request (a fifth of single-image /embed's CPU).


async def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:  # only while shutting down: start-up ends once the worker is ready
        raise Unavailable("the service is not ready", headers={"Retry-After": "5"})
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_gallery(runtime: RuntimeDep) -> Gallery:
    return runtime.gallery


GalleryDep = Annotated[Gallery, Depends(get_gallery)]

COLLECTION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
COLLECTION_RULE = "1–64 of A–Z a–z 0–9 _ - starting with a letter or digit"


def collection_name(name: str) -> str:
    if not COLLECTION_PATTERN.match(name):
        raise InvalidInput(f"collection name {name!r} is not valid: use {COLLECTION_RULE}")
    return name


async def get_collection(request: Request) -> str:
    """The collection the path names (`/collections/{collection}/…`); `default` elsewhere."""
    return collection_name(request.path_params.get("collection", DEFAULT_COLLECTION))


CollectionDep = Annotated[str, Depends(get_collection)]


async def document_collection(
    collection: Annotated[
        str,
        PathParam(
            description=f"a collection's name: {COLLECTION_RULE}",
            examples=["shoes"],
            json_schema_extra={"pattern": COLLECTION_PATTERN.pattern},
        ),
    ],
) -> None:
    """Puts `{collection}` into the OpenAPI of the routes under /collections/{collection}/."""


bearer = HTTPBearer(auto_error=False, description="the service's LOOKALIKE_API_KEY")


async def require_write_key(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    key = runtime.settings.api_key
    if key is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("this write needs Authorization: Bearer <key>")
    if not hmac.compare_digest(credentials.credentials.encode(), key.get_secret_value().encode()):
        raise Unauthorized("wrong API key")


WriteKey = Depends(require_write_key)


class ArrayJSONResponse(JSONResponse):
    """JSON by orjson, numpy arrays written directly: 64×256 floats in ~1 ms instead of ~6."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def rounded(values: np.ndarray, decimals: int) -> np.ndarray:
    """float64, rounded: float32's noise digits stay out of the JSON."""
    return np.round(values.astype(np.float64), decimals)
