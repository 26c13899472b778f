"""The gallery: /nearest, and /images to add, list, read and delete. The router is mounted twice:
at the root for the collection `default`, and under /collections/{collection}/ for every
collection (`CollectionDep`). Every route goes through `Gallery`, and every blocking call leaves
the event loop (`asyncio.to_thread`)."""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
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
from service.index import Hit
from service.inputs import (
    NamedImage,
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
from service.models import new_images
from service.routes.deps import (
    ERRORS,
    CollectionDep,
    GalleryDep,
    ReadAccess,
    RuntimeDep,
    WriteAccess,
)
from service.runtime import Runtime, Serving, embed_everywhere, with_serving_model
from service.schemas import (
    NEAREST_BODY,
    UPLOAD_BODY,
    CreatedResponse,
    ImageInfo,
    ImageList,
    NearestResponse,
)
from service.store import CONTENT_TYPES

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")

router = APIRouter(dependencies=[ReadAccess])  # writes add WriteAccess

ImageId = Annotated[str, PathParam(examples=["shirt-42"])]


def _not_found(image_id: object) -> NotFound:
    return NotFound(f"no image with id {image_id!r}")


@dataclass(frozen=True)
class NearestQuery:
    """A /nearest request, read and checked: exactly one of image, id and vector."""

    k: int
    where: Filter | None
    image: NamedImage | None = None
    image_id: object = None
    vector: object = None
    model: object = None  # the model that made `vector`, as the client says


async def _query(request: Request, runtime: Runtime) -> NearestQuery:
    """The query, k and filter, from a multipart or a JSON body."""
    settings = runtime.settings
    kind = content_type(request)
    if kind == "multipart/form-data":
        runtime.serving().batcher.ensure_room()
        form = await read_form(request, max_files=2)
        files = form_files(form, "file")
        count_between(files, "file uploads in the field 'file'", 1, 1)
        k = parse_k(
            form.get("k") or request.query_params.get("k"),
            default=settings.default_k,
            limit=settings.max_k,
        )
        text = form.get("filter")
        if text is not None and not isinstance(text, str):
            raise InvalidInput("filter must be a text field holding JSON, not a file")
        return NearestQuery(k, parse_filter_json(text) if text else None, image=files[0])
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
    if body.get("model") is not None and given[0] != "vector":
        raise InvalidInput('"model" names the model that made a "vector": send it with one')
    if given[0] == "image":
        return NearestQuery(k, where, image=b64_image(body["image"], "image"))
    return NearestQuery(
        k, where, image_id=body.get("id"), vector=body.get("vector"), model=body.get("model")
    )


async def _vector(
    query: NearestQuery, runtime: Runtime, serving: Serving, collection: str
) -> np.ndarray:
    """The query's vector in `serving`'s space."""
    settings = runtime.settings
    if query.image is not None:
        pixels = await decode_all(
            [query.image],
            serving.info.spec,
            max_pixels=settings.max_pixels,
            max_request_pixels=settings.max_pixels_per_request,
        )
        return (await serving.batcher.embed(pixels))[0]
    if query.vector is not None:
        if query.model is not None:
            check_vector_model(query.model, serving.info)
        return parse_vector(query.vector, serving.info.dim)
    image_id = query.image_id
    vector = (
        await asyncio.to_thread(
            runtime.gallery.vector_of, image_id, serving.version, collection=collection
        )
        if isinstance(image_id, str)
        else None
    )
    if vector is None:
        raise _not_found(image_id)
    return vector


def check_vector_model(made_by: object, model: ModelInfo) -> None:
    """`model` names the model that made the query's `vector`: it must be the one served."""
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
    query = await _query(request, runtime)

    async def answer(serving: Serving) -> list[Hit]:
        vector = await _vector(query, runtime, serving, collection)
        found = await asyncio.to_thread(
            gallery.search,
            vector[None, :],
            query.k,
            serving.version,
            collection=collection,
            where=query.where,
        )
        return found[0]

    serving, hits = await with_serving_model(runtime, answer)
    results = [
        {"id": h.id, "score": round(min(1.0, h.score), 6), "metadata": h.metadata} for h in hits
    ]
    return JSONResponse({"model": serving.version, "results": results})


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
    files = form_files(form, "files")
    count_between(files, "files", 1, limit)
    ids = _parse_ids(form.getlist("ids"), len(files))
    metadata = _parse_metadata(form.getlist("metadata"), len(files), settings.max_metadata_bytes)
    items = [
        (image_id, f.data, sniff_format(f.data), meta)
        for image_id, f, meta in zip(ids, files, metadata, strict=True)
    ]

    async def store(serving: Serving) -> list[bool]:
        vectors = await embed_everywhere(runtime, files)
        images = new_images(items, vectors, serving.version)
        return await asyncio.to_thread(
            gallery.upsert, images, serving.version, collection=collection
        )

    _, created = await with_serving_model(runtime, store)
    answer = [{"id": i, "created": c} for i, c in zip(ids, created, strict=True)]
    return JSONResponse({"items": answer}, status_code=201)


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
