"""What routes depend on: the worker's runtime, the gallery once it is ready, the request's key
and what it may do, the collection a route names, and the response helpers they share."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Forbidden, InvalidInput, NotFound, Unauthorized, Unavailable
from service.gallery import Gallery
from service.keys import PUBLIC_READER, AuthError, Principal, Scope
from service.runtime import Runtime
from service.schemas import ErrorResponse
from service.store import DEFAULT_COLLECTION

log = logging.getLogger("service.auth")

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 403, 404, 409, 413, 415, 422, 503, 507)
}

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 403)
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


KEY_SCHEME = {
    "scheme_name": "HTTPBearer",
    "description": "an API key (python -m service keys create)",
}
bearer = HTTPBearer(auto_error=False, **KEY_SCHEME)


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def get_principal(request: Request, runtime: RuntimeDep, credentials: BearerDep) -> Principal:
    """Who the request acts as, from its bearer key (service/keys.py); 401 when refused."""
    key = credentials.credentials if credentials is not None else None
    try:
        return runtime.keys.authenticate(key)
    except AuthError as exc:
        _refused(request, runtime, exc.reason)
        raise Unauthorized(str(exc)) from None


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _refused(request: Request, runtime: Runtime, reason: str) -> None:
    """Count and log a refused request, without any key material."""
    runtime.metrics.auth_failures.labels(reason).inc()
    client = request.client.host if request.client else None
    log.warning(
        "request refused",
        extra={
            "reason": reason,
            "method": request.method,
            "path": request.url.path,
            "client": client,
        },
    )


def _require(needed: Scope, request: Request, runtime: Runtime, principal: Principal) -> None:
    if principal is PUBLIC_READER and not principal.allows(needed):  # no key was sent
        _refused(request, runtime, "missing")
        raise Unauthorized(f"this needs a key with the {needed} scope: Authorization: Bearer <key>")
    if not principal.allows(needed):
        _refused(request, runtime, "scope")
        message = (
            f"this needs a key with the {needed} scope; {principal.name!r} has {principal.scope}"
        )
        raise Forbidden(message)


class KeyAccess(HTTPBearer):
    """A route dependency: the request's key must have the `needed` scope (401, else 403); its
    value is the worker's runtime. It is the bearer scheme itself (so OpenAPI documents it)
    and calls get_runtime and get_principal, not through dependencies of its own: each
    dependency FastAPI resolves costs the event loop time on every request."""

    def __init__(self, needed: Scope) -> None:
        super().__init__(auto_error=False, **KEY_SCHEME)  # one scheme in OpenAPI, as `bearer`
        self.needed = needed

    async def __call__(self, request: Request) -> Runtime:  # type: ignore[override]
        credentials = await super().__call__(request)
        runtime = await get_runtime(request)
        _require(self.needed, request, runtime, await get_principal(request, runtime, credentials))
        return runtime


ReadAccess, WriteAccess, AdminAccess = (Depends(KeyAccess(s)) for s in ("read", "write", "admin"))
# The runtime, for a route that reads: ReadAccess's check, whose value is the runtime.
ReadRuntime = Annotated[Runtime, ReadAccess]


async def metrics_access(request: Request, runtime: RuntimeDep) -> None:
    """/metrics: open with PUBLIC_METRICS (a scraper without a key), else a read key."""
    if not runtime.settings.public_metrics:
        principal = await get_principal(request, runtime, await bearer(request))
        _require("read", request, runtime, principal)


def visible(name: str, principal: Principal) -> str:
    """A valid collection name the key may see; to a key scoped elsewhere, an unknown one."""
    collection_name(name)
    if not principal.sees(name):
        raise NotFound(f"no collection named {name!r}")
    return name


async def get_collection(request: Request, principal: PrincipalDep) -> str:
    """The collection the path names (`/collections/{collection}/…`); `default` elsewhere."""
    return visible(request.path_params.get("collection", DEFAULT_COLLECTION), principal)


CollectionDep = Annotated[str, Depends(get_collection)]


class ArrayJSONResponse(JSONResponse):
    """JSON by orjson, numpy arrays written directly: 64×256 floats in ~1 ms instead of ~6."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def rounded(values: np.ndarray, decimals: int) -> np.ndarray:
    """float64, rounded: float32's noise digits stay out of the JSON."""
    return np.round(values.astype(np.float64), decimals)
