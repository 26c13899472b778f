"""The gallery: /nearest, and /images to add, list, read and delete. The router is mounted twice:
at the root for the collection `default`, and under /collections/{collection}/ for every
collection (`CollectionDep`). Every route goes through `Gallery`, and every blocking call leaves
the event loop (`asyncio.to_thread`)."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse

from service import strict_json
from service.encoder import ModelInfo
from service.errors import InvalidInput, ModelConflict, NotFound
from service.filters import Filter, parse_filter, parse_filter_json
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
    read_json,
)
from service.routes.deps import (
    ERRORS,
    CollectionDep,
    GalleryDep,
    ReadAccess,
    RuntimeDep,
    WriteAccess,
)
from service.runtime import Runtime
from service.schemas import (
    NEAREST_BODY,
    UPLOAD_BODY,
    CreatedResponse,
    ImageInfo,
    ImageList,
    NearestResponse,
)
from service.store import CONTENT_TYPES, NewImage

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")

router = APIRouter(dependencies=[ReadAccess])  # writes add WriteAccess

ImageId = Annotated[str, PathParam(examples=["shirt-42"])]


def _not_found(image_id: object) -> NotFound:
    return NotFound(f"no image with id {image_id!r}")


async def _query(
    request: Request, runtime: Runtime, collection: str
) -> tuple[np.ndarray, int, Filter | None]:
    """The query's vector, k and filter, from a multipart or a JSON body."""
    settings, batcher, model = runtime.settings, runtime.batcher, runtime.encoder.info
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
        text = form.get("filter")
        if text is not None and not isinstance(text, str):
            raise InvalidInput("filter must be a text field holding JSON, not a file")
        where = parse_filter_json(text) if text else None
        pixels = await decode_all(
            files,
            model.spec,
            max_pixels=settings.max_pixels,
            max_request_pixels=settings.max_pixels_per_request,
        )
        return (await batcher.embed(pixels))[0], k, where
    if kind != "application/json":
        raise InvalidInput(
            "send multipart/form-data (file, k, filter) or JSON (image | id | vector, k, filter)",
            code="unsupported_content_type",
        )
    body = await read_json(request)
    k = parse_k(body.get("k"), default=settings.default_k, limit=settings.max_k)
    where = parse_filter(body["filter"]) if body.get("filter") is not None else None
    given = [key for key in ("image", "id", "vector") if body.get(key) is not None]
    if len(given) != 1:
        raise InvalidInput('give exactly one of "image", "id" or "vector"')
    if body.get("model") is not None:
        check_vector_model(body["model"], given[0], model)
    if given[0] == "vector":
        return parse_vector(body["vector"], model.dim), k, where
    if given[0] == "id":
        image_id = body["id"]
        vector = (
            await asyncio.to_thread(runtime.gallery.vector_of, image_id, collection=collection)
            if isinstance(image_id, str)
            else None
        )
        if vector is None:
            raise _not_found(image_id)
        return vector, k, where
    image = b64_image(body["image"], "image")
    pixels = await decode_all(
        [image],
        model.spec,
        max_pixels=settings.max_pixels,
        max_request_pixels=settings.max_pixels_per_request,
    )
    return (await batcher.embed(pixels))[0], k, where


def check_vector_model(made_by: object, query: str, model: ModelInfo) -> None:
    """`model` names the model that made the query's `vector`: it must be the one served."""
    if query != "vector":
        raise InvalidInput('"model" names the model that made a "vector": send it with one')
    if not isinstance(made_by, str):
        raise InvalidInput('"model" must be a model version (a string: /embed\'s "model")')
    if made_by != model.version:
        raise ModelConflict(
            f"the vector was made by model {made_by!r}, but this service serves {model.name} "
            f"{model.version!r}: embed the image with this service's /embed, or query by image "
            "or id"
        )


@router.post(
    "/nearest", response_model=NearestResponse, responses=ERRORS, openapi_extra=NEAREST_BODY
)
async def nearest(
    request: Request, runtime: RuntimeDep, gallery: GalleryDep, collection: CollectionDep
) -> Any:
    """The k images of the collection that look most like the query, best first; with a
    `filter`, the k best among the images whose metadata matches it."""
    vector, k, where = await _query(request, runtime, collection)
    search = gallery.search
    hits = (
        await asyncio.to_thread(search, vector[None, :], k, collection=collection, where=where)
    )[0]
    results = [
        {"id": h.id, "score": round(min(1.0, h.score), 6), "metadata": h.metadata} for h in hits
    ]
    return JSONResponse({"model": runtime.encoder.info.version, "results": results})


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
            value = strict_json.loads(text, f"metadata[{i}]")
        except strict_json.InvalidJSON as exc:
            raise InvalidInput(str(exc), param="metadata") from exc
        if not isinstance(value, dict):
            raise InvalidInput(f"metadata[{i}] must be a JSON object")
        parsed.append(value)
    return parsed


@router.post(
    "/images",
    status_code=201,
    response_model=CreatedResponse,
    responses=ERRORS,
    dependencies=[WriteAccess],
    openapi_extra=UPLOAD_BODY,
)
async def upload_images(
    request: Request, runtime: RuntimeDep, gallery: GalleryDep, collection: CollectionDep
) -> Any:
    """Add images to the collection; an id that exists there is replaced (upsert)."""
    settings = runtime.settings
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
    pixels = await decode_all(
        files,
        runtime.encoder.info.spec,
        max_pixels=settings.max_pixels,
        max_request_pixels=settings.max_pixels_per_request,
    )
    vectors = await runtime.batcher.embed(pixels)
    images = [
        NewImage(image_id, f.data, sniff_format(f.data), meta, vector)
        for image_id, f, meta, vector in zip(ids, files, metadata, vectors, strict=True)
    ]
    created = await asyncio.to_thread(gallery.upsert, images, collection=collection)
    items = [{"id": i, "created": c} for i, c in zip(ids, created, strict=True)]
    return JSONResponse({"items": items}, status_code=201)


@router.get("/images", response_model=ImageList, responses=ERRORS)
async def list_images(
    gallery: GalleryDep,
    collection: CollectionDep,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,18}$", description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    filter: Annotated[
        str | None,
        Query(
            description="JSON: only images whose metadata matches, as /nearest's filter",
            examples=['{"label": "boot"}'],
        ),
    ] = None,
) -> Any:
    """The collection's images a page at a time: in upload order, or with a filter, in order of
    their last change."""
    after = int(cursor) if cursor else 0
    where = parse_filter_json(filter) if filter else None
    records, next_key = await asyncio.to_thread(
        gallery.page, after=after, limit=limit, collection=collection, where=where
    )
    return {
        "items": [r.to_json() for r in records],
        "next_cursor": str(next_key) if next_key is not None else None,
    }


@router.get("/images/{image_id}", response_model=ImageInfo, responses=ERRORS)
async def get_image(image_id: ImageId, gallery: GalleryDep, collection: CollectionDep) -> Any:
    record = await asyncio.to_thread(gallery.get, image_id, collection=collection)
    if record is None:
        raise _not_found(image_id)
    return record.to_json()


@router.get(
    "/images/{image_id}/content",
    responses={**ERRORS, 200: {"content": {"image/*": {"schema": {"format": "binary"}}}}},
    response_class=Response,
)
async def get_image_content(
    image_id: ImageId, gallery: GalleryDep, collection: CollectionDep
) -> Response:
    """The original bytes, as uploaded."""
    found = await asyncio.to_thread(gallery.content, image_id, collection=collection)
    if found is None:
        raise _not_found(image_id)
    record, content = found
    return Response(
        content,
        media_type=CONTENT_TYPES.get(record.format, "application/octet-stream"),
        headers={"Cache-Control": "private, max-age=3600", "ETag": f'"{record.sha256}"'},
    )


@router.delete(
    "/images/{image_id}",
    status_code=204,
    responses=ERRORS,
    dependencies=[WriteAccess],
    response_class=Response,
)
async def delete_image(
    image_id: ImageId, gallery: GalleryDep, collection: CollectionDep
) -> Response:
    if not await asyncio.to_thread(gallery.delete, image_id, collection=collection):
        raise _not_found(image_id)
    return Response(status_code=204)
