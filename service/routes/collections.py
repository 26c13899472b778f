"""Collections: named galleries, each with its own ids and index, over the same model. Their
images live under /collections/{name}/… (routes/gallery.py); the unprefixed gallery routes are
the collection `default`, which always exists."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse

from service.errors import Conflict, NotFound
from service.routes.deps import (
    COLLECTION_PATTERN,
    COLLECTION_RULE,
    ERRORS,
    AdminAccess,
    GalleryDep,
    PrincipalDep,
    ReadAccess,
    visible,
)
from service.schemas import CollectionInfo, CollectionList
from service.store import DEFAULT_COLLECTION

router = APIRouter(tags=["collections"], dependencies=[ReadAccess])  # changes: AdminAccess

# The schema states the rule; collection_name() enforces it with a message that says it.
Name = Annotated[
    str,
    PathParam(
        description=f"the collection's name: {COLLECTION_RULE}",
        examples=["shoes"],
        json_schema_extra={"pattern": COLLECTION_PATTERN.pattern},
    ),
]


@router.get("/collections", response_model=CollectionList, responses=ERRORS)
async def list_collections(gallery: GalleryDep, principal: PrincipalDep) -> Any:
    """Every collection the key may see, by name, with its image count and index kind."""
    items = await asyncio.to_thread(gallery.collections)
    return {"items": [item for item in items if principal.sees(item["name"])]}


@router.get("/collections/{name}", response_model=CollectionInfo, responses=ERRORS)
async def get_collection(name: Name, gallery: GalleryDep, principal: PrincipalDep) -> Any:
    return await asyncio.to_thread(gallery.collection, visible(name, principal))


@router.put(
    "/collections/{name}",
    response_model=CollectionInfo,
    status_code=201,
    responses={**ERRORS, 200: {"model": CollectionInfo, "description": "it existed already"}},
    dependencies=[AdminAccess],
)
async def create_collection(name: Name, gallery: GalleryDep, principal: PrincipalDep) -> Any:
    """Create the collection (201), or leave it as it is when it exists (200)."""
    created = await asyncio.to_thread(gallery.create_collection, visible(name, principal))
    info = await asyncio.to_thread(gallery.collection, name)
    return JSONResponse(info, status_code=201 if created else 200)


@router.delete(
    "/collections/{name}",
    status_code=204,
    responses=ERRORS,
    dependencies=[AdminAccess],
    response_class=Response,
)
async def delete_collection(name: Name, gallery: GalleryDep, principal: PrincipalDep) -> Response:
    """Delete the collection with its images (every worker's index forgets them at once)."""
    if visible(name, principal) == DEFAULT_COLLECTION:
        raise Conflict("the collection 'default' always exists; delete its images one by one")
    if not await asyncio.to_thread(gallery.drop_collection, name):
        raise NotFound(f"no collection named {name!r}")
    return Response(status_code=204)
