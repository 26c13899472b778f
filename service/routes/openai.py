"""OpenAI's embeddings API, for images: POST /v1/embeddings and GET /v1/models, in OpenAI's
request, response and error shapes, so the `openai` SDK (and what is built on it) works with
`base_url="http://host:8000/v1"` unchanged.

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.embeddings.create(model="fashion-mnist", input=["data:image/png;base64,…"])

`input` holds images as data URIs or bare base64, never URLs (nothing is fetched). Errors on
/v1/* take OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with the statuses
of the rest of the API: app.py's handlers ask `error_body` here for every path under PREFIX.
Embeddings are reads, so they are open like /embed: the Authorization header the SDK always
sends is not checked.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.encoder import ModelInfo, truncate
from service.errors import ApiError, InvalidInput, NotFound
from service.inputs import (
    SEND_BASE64,
    b64_image,
    count_between,
    decode_all,
    parse_dimensions,
    read_json,
)
from service.routes.deps import ArrayJSONResponse, ReadAccess, RuntimeDep, rounded

PREFIX = "/v1/"
OWNER = "lookalike"

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"], dependencies=[ReadAccess])


def error_body(status: int, code: str, message: str, param: str | None) -> dict[str, Any]:
    """OpenAI's error shape for one of our errors; `code` stays ours (e.g. invalid_image)."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorDetail

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                error_body(
                    404,
                    "model_not_found",
                    "the model 'text-embedding-3-small' does not exist; this service serves "
                    "'fashion-mnist'",
                    "model",
                )
            ]
        }
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorResponse} for status in (401, 403, 404, 413, 415, 422, 503)
}

EXAMPLE_PNG = (  # one black pixel
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR42mNgAAAAAgAB"
    "5Sfe/AAAAABJRU5ErkJggg=="
)


class EmbeddingsRequest(BaseModel):
    model: str = Field(description="the served model's name or version (GET /v1/models)")
    input: str | list[str] = Field(
        description="one image or a list: each a data URI (data:image/png;base64,…) or bare "
        "base64 of an image file; URLs are not fetched"
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each embedding as base64 of little-endian float32"
    )
    dimensions: int | None = Field(
        None, description="the first n components only, renormalised to unit length"
    )
    user: str | None = Field(None, description="accepted and ignored")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"model": "fashion-mnist", "input": [EXAMPLE_PNG], "dimensions": 64}]
        }
    )


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.0412, -0.1187]}],
                    "model": "fashion-mnist",
                    "usage": {"prompt_tokens": 0, "total_tokens": 0},
                }
            ]
        }
    )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


MODEL_EXAMPLE: dict[str, Any] = {
    "id": "fashion-mnist",
    "object": "model",
    "created": 1795750607,
    "owned_by": OWNER,
}


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"object": "list", "data": [MODEL_EXAMPLE]}]}
    )


def _card(model: ModelInfo) -> dict[str, Any]:
    try:
        created = int(dt.datetime.fromisoformat(model.created_at).timestamp())
    except ValueError:
        created = 0
    return {"id": model.name, "object": "model", "created": created, "owned_by": OWNER}


def _served(model: ModelInfo, name: str, param: str | None) -> None:
    if name not in (model.name, model.version):
        raise NotFound(
            f"the model {name!r} does not exist; this service serves {model.name!r}",
            code="model_not_found",
            param=param,
        )


def _encode(vector: np.ndarray, encoding_format: str) -> np.ndarray | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return rounded(vector, 7)  # as /embed writes them


@router.post(
    "/embeddings",
    response_model=EmbeddingsResponse,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EmbeddingsRequest.model_json_schema()}},
        }
    },
)
async def create_embeddings(request: Request, runtime: RuntimeDep) -> Any:
    """OpenAI's embeddings API, for images: one vector per input, in input order."""
    serving = runtime.serving()
    settings, batcher, model = runtime.settings, serving.batcher, serving.info
    batcher.ensure_room()  # a full queue refuses before the body is read and decoded
    try:  # parsed here rather than by FastAPI, so that a full queue costs no body read
        params = EmbeddingsRequest.model_validate(await read_json(request))
    except ValidationError as exc:
        if exc.errors()[0]["loc"][:1] == ("input",):  # token ids, say: text models' input
            message = f"input must be a string or a list of strings: {SEND_BASE64}"
            raise InvalidInput(message, param="input") from exc
        raise RequestValidationError(exc.errors()) from exc
    _served(model, params.model, "model")
    dimensions = parse_dimensions(params.dimensions, model.dim)
    inputs = [params.input] if isinstance(params.input, str) else params.input
    try:
        count_between(
            inputs, f"images in input ({SEND_BASE64})", 1, settings.max_images_per_request
        )
        images = [b64_image(value, f"input[{i}]") for i, value in enumerate(inputs)]
        pixels = await decode_all(
            images,
            model.spec,
            max_pixels=settings.max_pixels,
            max_request_pixels=settings.max_pixels_per_request,
        )
    except ApiError as exc:
        exc.param = "input"
        raise
    vectors = await batcher.embed(pixels)
    if dimensions is not None:
        vectors = truncate(vectors, dimensions)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, params.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": 0, "total_tokens": 0}  # images are not tokens
    return ArrayJSONResponse({"object": "list", "data": data, "model": model.name, "usage": usage})


@router.get("/models", response_model=ModelList, responses=ERRORS)
async def list_models(runtime: RuntimeDep) -> dict[str, Any]:
    """The served model, in OpenAI's shape."""
    return {"object": "list", "data": [_card(runtime.serving().info)]}


@router.get(
    "/models/{model_id}",
    response_model=ModelCard,
    responses={**ERRORS, 200: {"content": {"application/json": {"example": MODEL_EXAMPLE}}}},
)
async def retrieve_model(
    model_id: Annotated[str, PathParam(examples=["fashion-mnist"])], runtime: RuntimeDep
) -> dict[str, Any]:
    """One model by name or version (the served one, or 404)."""
    model = runtime.serving().info
    _served(model, model_id, None)
    return _card(model)
