"""The FastAPI app: `create_app(settings)`. The model, store and index load in `lifespan`.

python -m service --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import asyncio
import contextlib
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

from service.batcher import MicroBatcher, Overloaded
from service.config import Settings
from service.demo import seed_demo_gallery
from service.encoder import load_encoder
from service.errors import ApiError, PayloadTooLarge
from service.gallery import Gallery
from service.metrics import Metrics
from service.routes import WEB_DIR, router
from service.store import Store

log = logging.getLogger("service")

HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


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
            response = error_response(413, "payload_too_large", self._message())
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
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            elapsed = time.perf_counter() - start
            self.metrics.latency.labels(method, route, str(status)).observe(elapsed)


async def _open_gallery(app: FastAPI) -> None:
    state, settings = app.state, app.state.settings
    state.phase = "loading the index"
    await asyncio.to_thread(state.gallery.open)
    if settings.seed_demo_gallery:
        state.phase = "seeding the demo gallery"
        await asyncio.to_thread(seed_demo_gallery, state.gallery, settings.demo_gallery_size)
    state.metrics.store_size.set(state.gallery.store.count())
    state.ready, state.phase = True, "ready"
    log.info("ready", extra=state.gallery.status())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state, settings = app.state, app.state.settings
    state.ready, state.phase = False, "loading the model"
    state.encoder = load_encoder(settings.model_dir, threads=settings.inference_threads)
    log.info(
        "model loaded",
        extra={"model": state.encoder.info.name, "version": state.encoder.info.version},
    )
    state.batcher = MicroBatcher(
        state.encoder.embed_pixels,
        max_batch=settings.batch_size,
        max_wait_s=settings.batch_wait_ms / 1000,
        max_queued=settings.queue_max_images,
        enabled=settings.micro_batching,
        metrics=state.metrics,
    )
    await state.batcher.start()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    state.store = Store(settings.data_dir)
    state.gallery = Gallery(state.store, state.encoder, settings)
    opening = asyncio.create_task(_open_gallery(app))
    try:
        yield
    finally:
        if not opening.done():
            opening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await opening
        await state.batcher.stop()
        if state.ready:
            await asyncio.to_thread(state.gallery.close)
        state.store.close()


def allowed_methods(app: FastAPI, scope: Scope) -> set[str]:
    methods: set[str] = set()
    for route in app.routes:
        match, _ = route.matches({**scope, "method": "GET"})
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return methods


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="lookalike",
        version="0.1.0",
        lifespan=lifespan,
        description="Find the images that look alike.",
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.ready = False
    app.state.phase = "starting"
    app.include_router(router)
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)}
        return error_response(503, "overloaded", str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(422, "invalid_input", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not just the first route's
            headers["Allow"] = ", ".join(sorted(allowed_methods(app, request.scope)))
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _: ClientDisconnect) -> Response:
        # Not an error: the client closed the connection mid-body; nobody reads this answer.
        log.debug("client disconnected", extra={"path": request.url.path})
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", extra={"path": request.url.path})
        return error_response(500, "internal", "internal error; see the server log")

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
