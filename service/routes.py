"""HTTP routes. The contract (DESIGN.md) is what other apps and the benchmarks rely on."""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import uuid
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.batcher import MicroBatcher
from service.config import Settings
from service.errors import InsufficientStorage, InvalidInput, NotFound, Unauthorized, Unavailable
from service.gallery import Gallery
from service.imaging import sniff_format
from service.inputs import (
    b64_image,
    content_type,
    count_between,
    decode_all,
    form_files,
    parse_k,
    parse_vector,
    read_form,
    read_images,
    read_json,
)
from service.schemas import (
    NEAREST_BODY,
    UPLOAD_BODY,
    CreatedResponse,
    EmbedResponse,
    ErrorResponse,
    ImageInfo,
    ImageList,
    NearestResponse,
    SimilarityResponse,
    images_body,
)
from service.store import CONTENT_TYPES, NewImage, StorageFullError

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
WEB_DIR = Path(__file__).parent / "web"

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 404, 413, 415, 422, 503, 507)
}

router = APIRouter()

# Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in a thread
# pool, one thread hop per dependency per request (a fifth of single-image /embed's CPU).


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_gallery(request: Request) -> Gallery:
    gallery = getattr(request.app.state, "gallery", None)
    if gallery is None or not request.app.state.ready:
        raise Unavailable("the gallery is still loading", headers={"Retry-After": "5"})
    return gallery


async def get_batcher(request: Request) -> MicroBatcher:
    return request.app.state.batcher


bearer = HTTPBearer(auto_error=False, description="the service's LOOKALIKE_API_KEY")


async def require_write_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    key = request.app.state.settings.api_key
    if key is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("this write needs Authorization: Bearer <key>")
    if not hmac.compare_digest(credentials.credentials.encode(), key.get_secret_value().encode()):
        raise Unauthorized("wrong API key")


SettingsDep = Annotated[Settings, Depends(get_settings)]
GalleryDep = Annotated[Gallery, Depends(get_gallery)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]
WriteKey = Depends(require_write_key)


def model_version(request: Request) -> str:
    return request.app.state.encoder.info.version


async def embed_request(
    request: Request, settings: Settings, batcher: MicroBatcher, *, min_count: int, allow_raw: bool
) -> np.ndarray:
    """The request's images, read, decoded and embedded: (N, D) unit vectors in input order."""
    batcher.ensure_room()  # a full queue refuses before the body is read and decoded
    images = await read_images(
        request, min_count=min_count, max_count=settings.max_images_per_request, allow_raw=allow_raw
    )
    spec = request.app.state.encoder.info.spec
    return await batcher.embed(await decode_all(images, spec, max_pixels=settings.max_pixels))


class ArrayJSONResponse(JSONResponse):
    """JSON by orjson, numpy arrays written directly: 64×256 floats in ~1 ms instead of ~6."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def rounded(values: np.ndarray, decimals: int) -> np.ndarray:
    """float64, rounded: float32's noise digits stay out of the JSON."""
    return np.round(values.astype(np.float64), decimals)


@router.post(
    "/embed",
    response_model=EmbedResponse,
    responses=ERRORS,
    openapi_extra=images_body(min_items=1, raw=True),
)
async def embed_images(request: Request, settings: SettingsDep, batcher: BatcherDep) -> Any:
    """Images → unit vectors, in input order."""
    vectors = await embed_request(request, settings, batcher, min_count=1, allow_raw=True)
    return ArrayJSONResponse(
        {
            "model": model_version(request),
            "dim": int(vectors.shape[1]),
            "embeddings": rounded(vectors, 7),
        }
    )


@router.post(
    "/similarity",
    response_model=SimilarityResponse,
    responses=ERRORS,
    openapi_extra=images_body(min_items=2, raw=False),
)
async def similarity(request: Request, settings: SettingsDep, batcher: BatcherDep) -> Any:
    """The N×N cosine-score matrix of 2..N images."""
    h = await embed_request(request, settings, batcher, min_count=2, allow_raw=False)
    scores = np.clip(h.astype(np.float64) @ h.T.astype(np.float64), -1.0, 1.0)
    np.fill_diagonal(scores, 1.0)
    return ArrayJSONResponse({"model": model_version(request), "scores": rounded(scores, 6)})


async def _query_vector(
    request: Request, settings: Settings, gallery: Gallery, batcher: MicroBatcher
) -> tuple[np.ndarray, int]:
    spec = request.app.state.encoder.info.spec
    kind = content_type(request)
    if kind == "multipart/form-data":
        batcher.ensure_room()
        form = await read_form(request, max_files=2)
        files = await form_files(form, "file")
        count_between(files, "file uploads in the field 'file'", 1, 1)
        k = parse_k(
            form.get("k") or request.query_params.get("k"),
            default=settings.default_k,
            limit=settings.max_k,
        )
        pixels = await decode_all(files, spec, max_pixels=settings.max_pixels)
        return (await batcher.embed(pixels))[0], k
    if kind != "application/json":
        raise InvalidInput(
            "send multipart/form-data (file, k) or JSON (image | id | vector, k)",
            code="unsupported_content_type",
        )
    body = await read_json(request)
    k = parse_k(body.get("k"), default=settings.default_k, limit=settings.max_k)
    given = [key for key in ("image", "id", "vector") if body.get(key) is not None]
    if len(given) != 1:
        raise InvalidInput('give exactly one of "image", "id" or "vector"')
    if given[0] == "vector":
        return parse_vector(body["vector"], request.app.state.encoder.info.dim), k
    if given[0] == "id":
        image_id = body["id"]
        vector = gallery.store.get_vector(image_id) if isinstance(image_id, str) else None
        if vector is None:
            raise NotFound(f"no image with id {image_id!r}")
        return vector, k
    pixels = await decode_all(
        [b64_image(body["image"], "image")], spec, max_pixels=settings.max_pixels
    )
    return (await batcher.embed(pixels))[0], k


@router.post(
    "/nearest", response_model=NearestResponse, responses=ERRORS, openapi_extra=NEAREST_BODY
)
async def nearest(
    request: Request, settings: SettingsDep, gallery: GalleryDep, batcher: BatcherDep
) -> Any:
    """The k gallery images that look most like the query, best first."""
    vector, k = await _query_vector(request, settings, gallery, batcher)
    hits = (await asyncio.to_thread(gallery.search, vector[None, :], k))[0]
    results = [
        {"id": h.record.id, "score": round(min(1.0, h.score), 6), "metadata": h.record.metadata}
        for h in hits
    ]
    return JSONResponse({"model": model_version(request), "results": results})


def _parse_ids(values: list, count: int) -> list[str]:
    if not values:
        return [uuid.uuid4().hex for _ in range(count)]
    if len(values) != count:
        raise InvalidInput(f"give one id per file: {len(values)} ids for {count} files")
    ids = [str(v) for v in values]
    for image_id in ids:
        if not ID_PATTERN.match(image_id):
            raise InvalidInput(
                f"id {image_id!r} must be 1–128 of A–Z a–z 0–9 . _ : @ - "
                "and start with a letter or digit"
            )
    if len(set(ids)) != len(ids):
        raise InvalidInput("ids in one request must differ")
    return ids


def _parse_metadata(values: list, count: int, max_bytes: int) -> list[dict]:
    if not values:
        return [{} for _ in range(count)]
    if len(values) != count:
        raise InvalidInput(f"give one metadata JSON object per file: {len(values)} for {count}")
    parsed = []
    for i, text in enumerate(values):
        if not isinstance(text, str) or len(text.encode()) > max_bytes:
            raise InvalidInput(f"metadata[{i}] must be a JSON object of at most {max_bytes} bytes")
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise InvalidInput(f"metadata[{i}] is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise InvalidInput(f"metadata[{i}] must be a JSON object")
        parsed.append(value)
    return parsed


@router.post(
    "/images",
    status_code=201,
    response_model=CreatedResponse,
    responses=ERRORS,
    dependencies=[WriteKey],
    openapi_extra=UPLOAD_BODY,
)
async def upload_images(
    request: Request, settings: SettingsDep, gallery: GalleryDep, batcher: BatcherDep
) -> Any:
    """Add images to the gallery; an id that exists is replaced (upsert)."""
    if content_type(request) != "multipart/form-data":
        raise InvalidInput(
            "send multipart/form-data with files (+ ids, metadata)", code="unsupported_content_type"
        )
    limit = settings.max_images_per_request
    form = await read_form(request, max_files=limit + 1)
    files = await form_files(form, "files")
    count_between(files, "files", 1, limit)
    ids = _parse_ids(form.getlist("ids"), len(files))
    metadata = _parse_metadata(form.getlist("metadata"), len(files), settings.max_metadata_bytes)
    spec = request.app.state.encoder.info.spec
    pixels = await decode_all(files, spec, max_pixels=settings.max_pixels)
    vectors = await batcher.embed(pixels)
    images = [
        NewImage(image_id, f.data, sniff_format(f.data), meta, vector)
        for image_id, f, meta, vector in zip(ids, files, metadata, vectors, strict=True)
    ]
    try:
        created = await asyncio.to_thread(gallery.upsert, images)
    except StorageFullError as exc:
        raise InsufficientStorage("the data dir is full; nothing was stored") from exc
    items = [{"id": i, "created": c} for i, c in zip(ids, created, strict=True)]
    return JSONResponse({"items": items}, status_code=201)


@router.get("/images", response_model=ImageList, responses=ERRORS)
async def list_images(
    gallery: GalleryDep,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,18}$", description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """Gallery images in upload order, a page at a time."""
    try:
        after = int(cursor) if cursor else 0
    except ValueError as exc:
        raise InvalidInput("cursor must come from a previous page's next_cursor") from exc
    records, next_key = await asyncio.to_thread(gallery.store.page, after_key=after, limit=limit)
    return {
        "items": [r.to_json() for r in records],
        "next_cursor": str(next_key) if next_key is not None else None,
    }


@router.get("/images/{image_id}", response_model=ImageInfo, responses=ERRORS)
async def get_image(image_id: str, gallery: GalleryDep) -> Any:
    record = await asyncio.to_thread(gallery.store.get, image_id)
    if record is None:
        raise NotFound(f"no image with id {image_id!r}")
    return record.to_json()


@router.get("/images/{image_id}/content", responses=ERRORS, response_class=Response)
async def get_image_content(image_id: str, gallery: GalleryDep) -> Any:
    """The original bytes, as uploaded."""
    record = await asyncio.to_thread(gallery.store.get, image_id)
    if record is None:
        raise NotFound(f"no image with id {image_id!r}")
    return FileResponse(
        gallery.store.original_path(record.sha256),
        media_type=CONTENT_TYPES.get(record.format, "application/octet-stream"),
        headers={"Cache-Control": "private, max-age=3600", "ETag": f'"{record.sha256}"'},
    )


@router.delete(
    "/images/{image_id}",
    status_code=204,
    responses=ERRORS,
    dependencies=[WriteKey],
    response_class=Response,
)
async def delete_image(image_id: str, gallery: GalleryDep) -> Response:
    if not await asyncio.to_thread(gallery.delete, image_id):
        raise NotFound(f"no image with id {image_id!r}")
    return Response(status_code=204)


@router.get("/healthz")
async def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(request: Request) -> Any:
    """Ready when the model is loaded and the index is in step with the store."""
    state = request.app.state
    if not state.ready:
        return JSONResponse(
            {"error": {"code": "not_ready", "message": state.phase}},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    status = await asyncio.to_thread(state.gallery.status)
    return {"status": "ready", "model": model_version(request), **status}


@router.get("/info")
async def service_info(request: Request, settings: SettingsDep) -> dict:
    """What the web page and clients need to know: the model, auth and limits."""
    model = request.app.state.encoder.info
    return {
        "model": {
            "name": model.name,
            "version": model.version,
            "dim": model.dim,
            "input": model.spec.to_dict(),
        },
        "auth_required": settings.api_key is not None,
        "limits": {
            "max_k": settings.max_k,
            "max_upload_bytes": settings.max_upload_bytes,
            "max_images_per_request": settings.max_images_per_request,
            "max_pixels": settings.max_pixels,
        },
    }


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    state = request.app.state
    if state.ready:
        state.metrics.index_size.set(state.gallery.index.count)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


@router.get("/", include_in_schema=False)
async def web_page() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")
