"""The FastAPI app: `create_app(settings)`. The model, store and index load in `lifespan`.

python -m service --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.batcher import Overloaded
from service.config import Settings
from service.demo import seed_demo_gallery
from service.encoder import load_encoder
from service.errors import ApiError, PayloadTooLarge, api_error_for
from service.filters import FilterError
from service.gallery import Gallery
from service.heap import settled_heap
from service.keys import Keyring
from service.metrics import Metrics
from service.models import ModelSet, ModelSwitched
from service.routes import WEB_DIR, include_routes, openai
from service.runtime import Runtime
from service.security_headers import SecurityHeadersMiddleware, headers_for
from service.store import StoreUnavailable, open_store
from service.store.base import StoreError

log = logging.getLogger("service")

HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
STORE_RETRY_S = 2.0


def error_response(
    scope: Scope,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    param: str | None = None,
) -> JSONResponse:
    """The one error envelope, {"error": {"code", "message"}}; OpenAI's shape under /v1/."""
    if scope["path"].startswith(openai.PREFIX):
        body = openai.error_body(status, code, message, param)
    else:
        body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


class BodyLimitMiddleware:
    """Refuse bodies over the limit while they stream in, whatever Content-Length says."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(scope, 413, "payload_too_large", self._message())
            return await response(scope, receive, send)
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the request body is over the limit of {self.max_bytes} bytes"


class MetricsMiddleware:
    """Request count and latency by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - start
            self.metrics.observe_request(scope["method"], route, status, elapsed)


async def _open_gallery(runtime: Runtime) -> None:
    """Wait for the store, re-embed after a model change, load the index, seed the demo gallery.
    Part of start-up: a worker takes connections only once its index is ready, since workers
    share one listening socket and a client must never land on one that is still loading."""
    gallery, settings = runtime.gallery, runtime.settings
    while True:
        try:
            await asyncio.to_thread(gallery.open)
            break
        except StoreUnavailable as exc:
            log.warning("waiting for the database", extra={"why": str(exc)})
            await asyncio.sleep(STORE_RETRY_S)
    await asyncio.to_thread(runtime.keys.start)
    if not runtime.keys.required:
        log.warning("no API keys: anyone who can reach this service can read and change it")
    elif runtime.keys.public_reads:
        log.warning("PUBLIC_READS: anyone who can reach this service can search and download")
    if settings.seed_demo_gallery:
        await asyncio.to_thread(seed_demo_gallery, gallery, runtime.models, settings)
    runtime.metrics.store_size.set(await asyncio.to_thread(gallery.count))
    serving = runtime.serving()  # its batcher starts here, on the event loop
    log.info(
        "ready",
        extra={"model": serving.version, **(await asyncio.to_thread(gallery.status)).to_dict()},
    )


def lifespan_for(settings: Settings, metrics: Metrics):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        seed_encoder = load_encoder(settings.model_dir, threads=settings.inference_threads)
        store = open_store(settings)
        keys = Keyring(
            store,
            bootstrap_key=settings.api_key.get_secret_value() if settings.api_key else None,
            public_reads=settings.public_reads,
            refresh_interval_s=settings.follow_interval_s,
        )
        models = ModelSet(store, settings, metrics)
        gallery = Gallery(store, seed_encoder, settings, models)
        runtime = Runtime(settings, metrics, models, gallery, keys)
        try:
            await _open_gallery(runtime)
            app.state.runtime = runtime
            with settled_heap():
                yield
        finally:
            await models.stop()
            await asyncio.to_thread(keys.stop)
            await asyncio.to_thread(runtime.gallery.close)
            store.close()

    return lifespan


def allowed_methods(app: FastAPI, scope: Scope) -> set[str]:
    methods: set[str] = set()
    for route in app.routes:
        match, _ = route.matches({**scope, "method": "GET"})
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return methods


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    app = FastAPI(
        title="lookalike",
        version="0.1.0",
        lifespan=lifespan_for(settings, metrics),
        description="Find the images that look alike.",
    )
    include_routes(app)
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            request.scope, exc.status, exc.code, exc.message, exc.headers, exc.param
        )

    @app.exception_handler(Overloaded)
    @app.exception_handler(ModelSwitched)
    @app.exception_handler(StoreError)
    @app.exception_handler(FilterError)
    async def mapped(request: Request, exc: Exception) -> JSONResponse:
        error = api_error_for(exc)
        if error is None:
            return await unexpected(request, exc)
        return error_response(request.scope, error.status, error.code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ())]
        message = f"{'.'.join(loc)}: {first.get('msg', 'invalid')}"
        param = next((p for p in loc if p not in ("body", "query", "path")), None)
        return error_response(request.scope, 422, "invalid_input", message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not just the first route's
            headers["Allow"] = ", ".join(sorted(allowed_methods(app, request.scope)))
        return error_response(request.scope, exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _: ClientDisconnect) -> Response:
        # Not an error: the client closed the connection mid-body; nobody reads this answer.
        log.debug("client disconnected", extra={"path": request.url.path})
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", extra={"path": request.url.path})
        response = error_response(
            request.scope, 500, "internal", "internal error; see the server log"
        )
        response.headers.update(dict(headers_for(request.url.path)))  # sent past the middleware
        return response

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeadersMiddleware)
    return app
