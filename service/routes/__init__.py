"""HTTP routes, by concern. The contract (DESIGN.md) is what other apps and benchmarks rely on."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from service.routes import collections, embedding, gallery, openai, ops
from service.routes.deps import document_collection
from service.routes.ops import WEB_DIR


def include_routes(app: FastAPI) -> None:
    """Every router straight into the app, not through one router of routers: FastAPI matches a
    request by walking the included routers, and checks every route of a router of routers for
    changes on each request (17 checks per /embed through one; BENCHMARKS.md §3)."""
    app.include_router(embedding.router)
    app.include_router(collections.router)
    app.include_router(gallery.router)  # the collection `default`
    app.include_router(
        gallery.router,
        prefix="/collections/{collection}",
        dependencies=[Depends(document_collection)],
        tags=["collections"],
    )
    app.include_router(ops.router)
    app.include_router(openai.router)


__all__ = ["WEB_DIR", "include_routes", "openai"]
