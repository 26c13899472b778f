"""Request and response schemas (what /docs shows and what clients can rely on)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ImagesJson(BaseModel):
    images: list[str] = Field(description="base64-encoded image files")


class NearestJson(BaseModel):
    image: str | None = Field(None, description="a base64-encoded image file")
    id: str | None = Field(None, description="an id from the gallery")
    vector: list[float] | None = Field(None, description="an embedding of the model's dim")
    k: int | None = Field(None, ge=1, description="how many results (default 10)")


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]]


class SimilarityResponse(BaseModel):
    model: str
    scores: list[list[float]]


class NearestResult(BaseModel):
    id: str
    score: float
    metadata: dict[str, Any]


class NearestResponse(BaseModel):
    model: str
    results: list[NearestResult]


class CreatedItem(BaseModel):
    id: str
    created: bool


class CreatedResponse(BaseModel):
    items: list[CreatedItem]


class ImageInfo(BaseModel):
    id: str
    metadata: dict[str, Any]
    sha256: str
    size: int
    format: str
    created_at: str
    updated_at: str
    model: str


class ImageList(BaseModel):
    items: list[ImageInfo]
    next_cursor: str | None


def _multipart(properties: dict, required: list[str]) -> dict:
    return {"schema": {"type": "object", "properties": properties, "required": required}}


def _files(min_items: int) -> dict:
    return {"type": "array", "minItems": min_items, "items": {"type": "string", "format": "binary"}}


def _b64_images(min_items: int) -> dict:
    schema = ImagesJson.model_json_schema()
    schema["properties"]["images"]["minItems"] = min_items
    return schema


def images_body(*, min_items: int, raw: bool) -> dict:
    """openapi_extra for endpoints that parse their own (multipart | JSON | raw) bodies."""
    content: dict[str, Any] = {
        "multipart/form-data": _multipart({"files": _files(min_items)}, ["files"]),
        "application/json": {"schema": _b64_images(min_items)},
    }
    if raw:
        content["image/*"] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}


NEAREST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": _multipart(
                {"file": {"type": "string", "format": "binary"}, "k": {"type": "integer"}},
                ["file"],
            ),
            "application/json": {"schema": NearestJson.model_json_schema()},
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
