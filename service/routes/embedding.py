"""Images in, vectors out: /embed and /similarity. No gallery involved."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from service.encoder import truncate
from service.inputs import decode_all, parse_dimensions, read_images
from service.routes.deps import ERRORS, ArrayJSONResponse, ReadRuntime, rounded
from service.runtime import Runtime, Serving
from service.schemas import DIMENSIONS_QUERY, EmbedResponse, SimilarityResponse, images_body

# No router-level ReadAccess: each route takes ReadRuntime, the same check, and FastAPI would
# resolve a router-level copy again from its cache on every request (about 25 µs of /embed's
# event-loop time). tests/test_keys.py checks that every route needs a key.
router = APIRouter()


async def embed_request(
    request: Request, runtime: Runtime, serving: Serving, *, min_count: int, allow_raw: bool
) -> np.ndarray:
    """The request's images, read, decoded and embedded: (N, D) unit vectors in input order."""
    settings, batcher = runtime.settings, serving.batcher
    batcher.ensure_room()  # a full queue refuses before the body is read and decoded
    images = await read_images(
        request, min_count=min_count, max_count=settings.max_images_per_request, allow_raw=allow_raw
    )
    pixels = await decode_all(
        images,
        serving.info.spec,
        max_pixels=settings.max_pixels,
        max_request_pixels=settings.max_pixels_per_request,
    )
    return await batcher.embed(pixels)


@router.post(
    "/embed",
    response_model=EmbedResponse,
    responses=ERRORS,
    openapi_extra={**images_body(min_items=1, raw=True), "parameters": [DIMENSIONS_QUERY]},
)
async def embed_images(request: Request, runtime: ReadRuntime) -> Any:
    """Images → unit vectors, in input order."""
    serving = runtime.serving()
    dimensions = parse_dimensions(request.query_params.get("dimensions"), serving.info.dim)
    vectors = await embed_request(request, runtime, serving, min_count=1, allow_raw=True)
    if dimensions is not None:
        vectors = truncate(vectors, dimensions)
    return ArrayJSONResponse(
        {
            "model": serving.version,
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
async def similarity(request: Request, runtime: ReadRuntime) -> Any:
    """The N×N cosine-score matrix of 2..N images."""
    serving = runtime.serving()
    h = await embed_request(request, runtime, serving, min_count=2, allow_raw=False)
    scores = np.clip(h.astype(np.float64) @ h.T.astype(np.float64), -1.0, 1.0)
    np.fill_diagonal(scores, 1.0)
    return ArrayJSONResponse({"model": serving.version, "scores": rounded(scores, 6)})
