"""Request and response schemas (what /docs shows and what clients can rely on)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Examples for /docs (every route shows one: tests/test_service_api.py checks).
VERSION = "6993623211532885e6fdaa0ec03b6bd65b0f8705e1e7ccaa3be10c20eb9e62b0"
PNG_B64 = (  # one black pixel
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR42mNgAAAAAgAB5Sfe/AAAAABJRU5ErkJggg=="
)
IMAGE_EXAMPLE = {
    "collection": "default",
    "id": "shirt-42",
    "metadata": {"label": "shirt", "path": "tops/shirt-42.png"},
    "sha256": "4c8824c91bf261d3ac3e6a11a5839a43ceed0fccd70d45a9244cf4abd23a4e8c",
    "size": 1432,
    "format": "PNG",
    "created_at": "2026-11-28T09:12:03+00:00",
    "updated_at": "2026-11-28T09:12:03+00:00",
    "model": VERSION,
}


FILTER_HELP = (
    'only images whose metadata matches, in MongoDB\'s syntax: {"label": "boot"}; $eq $ne '
    "$in $nin $gt $gte $lt $lte $exists; $and $or (README: Filters)"
)


def examples(*values: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(values)})


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail

    model_config = examples(
        {"error": {"code": "not_found", "message": "no image with id 'shirt-42'"}}
    )


class ImagesJson(BaseModel):
    images: list[str] = Field(description="base64-encoded image files")


class NearestJson(BaseModel):
    image: str | None = Field(None, description="a base64-encoded image file")
    id: str | None = Field(None, description="an id from the gallery")
    vector: list[float] | None = Field(None, description="an embedding of the model's dim")
    model: str | None = Field(
        None,
        description="with `vector`: the version of the model that made it (`model` of /embed); "
        "409 model_mismatch when the service serves another",
    )
    k: int | None = Field(None, ge=1, description="how many results (default 10)")
    filter: dict[str, Any] | None = Field(None, description=FILTER_HELP)


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]]

    model_config = examples(
        {"model": VERSION, "dim": 4, "embeddings": [[0.2669778, 0.761492, -0.4092072, 0.4259135]]}
    )


class SimilarityResponse(BaseModel):
    model: str
    scores: list[list[float]]

    model_config = examples({"model": VERSION, "scores": [[1.0, 0.873412], [0.873412, 1.0]]})


class NearestResult(BaseModel):
    id: str
    score: float
    metadata: dict[str, Any]


class NearestResponse(BaseModel):
    model: str
    results: list[NearestResult]

    model_config = examples(
        {
            "model": VERSION,
            "results": [
                {"id": "shirt-42", "score": 0.962311, "metadata": {"label": "shirt"}},
                {"id": "shirt-7", "score": 0.914006, "metadata": {"label": "shirt"}},
            ],
        }
    )


class CreatedItem(BaseModel):
    id: str
    created: bool


class CreatedResponse(BaseModel):
    items: list[CreatedItem]

    model_config = examples(
        {"items": [{"id": "shirt-42", "created": True}, {"id": "dress-3", "created": False}]}
    )


class ImageInfo(BaseModel):
    collection: str
    id: str
    metadata: dict[str, Any]
    sha256: str
    size: int
    format: str
    created_at: str
    updated_at: str
    model: str

    model_config = examples(IMAGE_EXAMPLE)


class ImageList(BaseModel):
    items: list[ImageInfo]
    next_cursor: str | None

    model_config = examples({"items": [IMAGE_EXAMPLE], "next_cursor": "42"})


class CollectionInfo(BaseModel):
    name: str
    count: int
    index_kind: str = Field(
        description="this worker's index of it: flat (exact), hnsw or ivf (compressed)"
    )

    model_config = examples({"name": "shoes", "count": 1200, "index_kind": "flat"})


class CollectionList(BaseModel):
    items: list[CollectionInfo]

    model_config = examples(
        {
            "items": [
                {"name": "default", "count": 3000, "index_kind": "flat"},
                {"name": "shoes", "count": 1200, "index_kind": "flat"},
            ]
        }
    )


def _multipart(properties: dict, required: list[str]) -> dict:
    return {"schema": {"type": "object", "properties": properties, "required": required}}


def _files(min_items: int) -> dict:
    return {"type": "array", "minItems": min_items, "items": {"type": "string", "format": "binary"}}


def _b64_images(min_items: int) -> dict:
    schema = ImagesJson.model_json_schema()
    schema["properties"]["images"]["minItems"] = min_items
    schema["examples"] = [{"images": [PNG_B64] * min_items}]
    return schema


_DIMENSIONS_HELP = "the first n components only, renormalised (1..the model's dim)"
# /embed's query parameter, which it parses itself (service.inputs.parse_dimensions): FastAPI
# would validate it on every request.
DIMENSIONS_QUERY = {
    "name": "dimensions",
    "in": "query",
    "required": False,
    "description": _DIMENSIONS_HELP,
    "schema": {
        "anyOf": [{"type": "integer"}, {"type": "null"}],
        "title": "Dimensions",
        "description": _DIMENSIONS_HELP,
    },
}


def images_body(*, min_items: int, raw: bool) -> dict:
    """openapi_extra for endpoints that parse their own (multipart | JSON | raw) bodies."""
    content: dict[str, Any] = {
        "multipart/form-data": _multipart({"files": _files(min_items)}, ["files"]),
        "application/json": {"schema": _b64_images(min_items)},
    }
    if raw:
        content["image/*"] = {
            "schema": {"type": "string", "format": "binary"},
            "example": "(bytes)",
        }
    return {"requestBody": {"required": True, "content": content}}


NEAREST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": _multipart(
                {
                    "file": {"type": "string", "format": "binary"},
                    "k": {"type": "integer"},
                    "filter": {"type": "string", "description": f"JSON: {FILTER_HELP}"},
                },
                ["file"],
            ),
            "application/json": {
                "schema": NearestJson.model_json_schema(),
                "examples": {
                    "image": {"value": {"image": PNG_B64, "k": 5}},
                    "id": {"value": {"id": "shirt-42", "k": 5}},
                    "filter": {
                        "summary": "only boots under 50",
                        "value": {
                            "id": "shirt-42",
                            "k": 5,
                            "filter": {"label": "boot", "price": {"$lt": 50}},
                        },
                    },
                    "vector": {
                        "summary": "a full-size vector, and the model that made it",
                        "value": {"vector": [0.1], "model": VERSION, "k": 5},
                    },
                },
            },
        },
    }
}

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": _multipart(
                {
                    "files": _files(1),
                    "ids": {"type": "array", "items": {"type": "string"}},
                    "metadata": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "one JSON object per file",
                    },
                },
                ["files"],
            )
        },
    }
}
