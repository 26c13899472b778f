"""Every error leaves the service as JSON: {"error": {"code": "...", "message": "..."}}, or
on the OpenAI-compatible /v1/* in OpenAI's shape, with the same status (routes/openai.py).

ApiError
├── PayloadTooLarge        413 payload_too_large     body, image or pixel count over a limit
├── UnsupportedMediaType   415 unsupported_format    image format or Content-Type not allowed
├── InvalidInput           422 invalid_input         undecodable image, bad JSON, bad parameter
├── NotFound               404 not_found             unknown id or collection
├── Conflict               409 conflict              a change the gallery refuses (delete `default`)
├── ModelConflict          409 model_mismatch        a vector another model made, sent to /nearest
├── Unauthorized           401 unauthorized          missing, unknown, revoked or expired API key
├── Forbidden              403 forbidden             the key's scope does not allow this
├── Unavailable            503 not_ready             still starting (with Retry-After)
└── InsufficientStorage    507 insufficient_storage  the data dir or database is full

Other layers' exceptions map to statuses in one table, `api_error_for`:
  batcher.Overloaded         503 overloaded            the model queue is full (Retry-After)
  store.StoreUnavailable     503 store_unavailable     the database is away (Retry-After)
  store.StorageFullError     507 insufficient_storage  the data dir or database is full
  store.ModelMismatch        503 model_mismatch        the store's vectors are another model's
  store.UnknownCollection    404 not_found             no collection of that name
  filters.FilterError        422 invalid_filter        a malformed metadata filter
"""

from __future__ import annotations

from service.batcher import Overloaded
from service.filters import FilterError
from service.imaging import ALLOWED_FORMATS, ImageError, ImageTooLargeError, UnsupportedFormatError
from service.models import ModelSwitched
from service.store import ModelMismatch, StorageFullError, StoreUnavailable, UnknownCollection
from service.store.base import ModelsChanged

STORE_RETRY_AFTER_S = 5
SEND_IMAGE = f"send an image file ({', '.join(sorted(ALLOWED_FORMATS))})"


class ApiError(Exception):
    status = 500
    code = "internal"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: dict | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.headers = headers or {}
        self.param = param  # the request field at fault, for OpenAI's error shape

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_format"


class InvalidInput(ApiError):
    status, code = 422, "invalid_input"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class ModelConflict(ApiError):
    status, code = 409, "model_mismatch"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class Unavailable(ApiError):
    status, code = 503, "not_ready"


class InsufficientStorage(ApiError):
    status, code = 507, "insufficient_storage"


def api_error_for(exc: Exception) -> ApiError | None:
    """The API error for another layer's exception; None when it is not the client's to see."""
    if isinstance(exc, Overloaded):
        retry = {"Retry-After": str(exc.retry_after_s)}
        return Unavailable(str(exc), code="overloaded", headers=retry)
    if isinstance(exc, StoreUnavailable):
        retry = {"Retry-After": str(STORE_RETRY_AFTER_S)}
        message = "the gallery's database is unavailable; nothing was changed, retry shortly"
        return Unavailable(message, code="store_unavailable", headers=retry)
    if isinstance(exc, StorageFullError):
        return InsufficientStorage(f"{exc}")
    if isinstance(exc, ModelMismatch):
        return Unavailable(str(exc), code="model_mismatch")
    if isinstance(exc, ModelSwitched | ModelsChanged):  # twice within one request
        retry = {"Retry-After": "1"}
        return Unavailable("the serving model is changing; retry shortly", headers=retry)
    if isinstance(exc, UnknownCollection):
        return NotFound(str(exc))
    if isinstance(exc, FilterError):
        return InvalidInput(str(exc), code="invalid_filter")
    return None


def image_error(exc: ImageError, name: str) -> ApiError:
    """The API error for an image that cannot be used, naming which one."""
    message = f"{name}: {exc}"
    if isinstance(exc, UnsupportedFormatError):
        return UnsupportedMediaType(message)
    if isinstance(exc, ImageTooLargeError):
        return PayloadTooLarge(message)
    return InvalidInput(f"{message}; {SEND_IMAGE}", code="invalid_image")
