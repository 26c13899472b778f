"""HTTP routes, by concern. The contract (DESIGN.md) is what other apps and benchmarks rely on."""

from __future__ import annotations

from fastapi import APIRouter

from service.routes import embedding, gallery, openai, ops
from service.routes.ops import WEB_DIR

router = APIRouter()
router.include_router(embedding.router)
router.include_router(gallery.router)
router.include_router(ops.router)
router.include_router(openai.router)

__all__ = ["WEB_DIR", "openai", "router"]
