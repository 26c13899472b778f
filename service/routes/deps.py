"""What routes depend on: the worker's runtime, the gallery once it is ready, the write key,
and the response helpers they share."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Unauthorized, Unavailable
from service.gallery import Gallery
from service.runtime import Runtime
from service.schemas import ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 404, 413, 415, 422, 503, 507)
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
