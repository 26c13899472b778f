"""HTTP routes, by concern. The contract (DESIGN.md) is what other apps and benchmarks rely on."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.routes import collections, embedding, gallery, openai, ops
from service.routes.deps import document_collection
from service.routes.ops import WEB_DIR

router = APIRouter()
router.include_router(embedding.router)
router.include_router(collections.router)
router.include_router(gallery.router)  # the collection `default`
router.include_router(
    gallery.router,
    prefix="/collections/{collection}",
    dependencies=[Depends(document_collection)],
    tags=["collections"],
)
router.include_router(ops.router)
router.include_router(openai.router)

__all__ = ["WEB_DIR", "openai", "router"]
