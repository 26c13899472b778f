"""Operations: liveness, readiness, what the service serves, metrics, and the web page."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import FileResponse

from service.routes.deps import AUTH_ERRORS, ReadAccess, RuntimeDep, metrics_access
from service.schemas import VERSION, ErrorResponse
from service.store import StoreUnavailable

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

router = APIRouter()


def example(value: Any, media_type: str = "application/json") -> dict[int | str, dict[str, Any]]:
    """A 200 response's example, for routes without a response schema."""
    return {200: {"content": {media_type: {"example": value}}}}


READY_EXAMPLE = {
    "status": "ready",
    "model": VERSION,
    "worker": 27287,
    "indexed": 3000,
    "index_kind": "flat",
    "index_tombstones": 0,
    "index_unreadable": 0,
    "index_seq": 3000,
    "index_generation": "000000002000-5f0c2b1a",
    "collections": 1,
    "store": "sqlite",
    "store_available": True,
    "images": 3000,
    "store_seq": 3000,
}
INFO_EXAMPLE = {
    "model": {
        "name": "fashion-mnist",
        "version": VERSION,
        "dim": 256,
        "input": {
            "channels": 1,
            "height": 28,
            "width": 28,
            "colour_mode": "L",
            "resize": "stretch",
        },
    },
    "kept_models": [
        {
            "name": "fashion-mnist",
            "version": VERSION,
            "dim": 256,
            "serving": True,
            "vectors": 3000,
            "images": 3000,
        }
    ],
    "auth_required": True,
    "public_reads": False,
    "limits": {
        "max_k": 1000,
        "max_upload_bytes": 33554432,
        "max_images_per_request": 256,
        "max_pixels": 40000000,
        "max_pixels_per_request": 200000000,
    },
}
METRICS_EXAMPLE = 'lookalike_requests_total{method="POST",route="/embed",status="200"} 42.0\n'


@router.get("/healthz", responses=example({"status": "ok"}))
async def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}, **example(READY_EXAMPLE)})
async def readyz(runtime: RuntimeDep) -> Any:
    """Ready: the model is loaded and this worker's index has caught up with the store (a
    worker answers nothing before that)."""
    status = await asyncio.to_thread(runtime.gallery.status)
    return {"status": "ready", "model": runtime.serving().version, **status.to_dict()}


@router.get("/info", responses={**AUTH_ERRORS, **example(INFO_EXAMPLE)}, dependencies=[ReadAccess])
async def service_info(runtime: RuntimeDep) -> dict:
    """What the web page and clients need to know: the model, the models the store keeps (how
    far each one's vectors have been built: `python -m service model`), auth and limits."""
    model, settings = runtime.serving().info, runtime.settings
    return {
        "model": {
            "name": model.name,
            "version": model.version,
            "dim": model.dim,
            "input": model.spec.to_dict(),
        },
        "kept_models": await asyncio.to_thread(runtime.gallery.kept_models),
        "auth_required": runtime.keys.required,
        "public_reads": runtime.keys.required and runtime.keys.public_reads,
        "limits": {
            "max_k": settings.max_k,
            "max_upload_bytes": settings.max_upload_bytes,
            "max_images_per_request": settings.max_images_per_request,
            "max_pixels": settings.max_pixels,
            "max_pixels_per_request": settings.max_pixels_per_request,
        },
    }


@router.get(
    "/metrics",
    response_class=Response,
    responses={**AUTH_ERRORS, **example(METRICS_EXAMPLE, "text/plain")},
    dependencies=[Depends(metrics_access)],
)
async def metrics(runtime: RuntimeDep) -> Response:
    runtime.metrics.index_size.set(runtime.gallery.indexed)
    runtime.metrics.unreadable_rows.set(runtime.gallery.unreadable)
    with contextlib.suppress(StoreUnavailable):  # the rest of the metrics still answer
        runtime.metrics.store_size.set(await asyncio.to_thread(runtime.gallery.count))
    body = await asyncio.to_thread(runtime.metrics.render)
    return Response(body, media_type="text/plain; version=0.0.4")


@router.get("/", include_in_schema=False)
async def web_page() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")
