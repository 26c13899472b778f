"""Every error leaves the service as JSON: {"error": {"code": "...", "message": "..."}}.

ApiError
├── PayloadTooLarge        413 payload_too_large     body, image or pixel count over a limit
├── UnsupportedMediaType   415 unsupported_format    image format or Content-Type not allowed
├── InvalidInput           422 invalid_input         undecodable image, bad JSON, bad parameter
├── NotFound               404 not_found             unknown id
├── Unauthorized           401 unauthorized          missing or wrong API key
├── Unavailable            503 not_ready             still starting (with Retry-After)
└── InsufficientStorage    507 insufficient_storage  the data dir is full

The batcher's own `Overloaded` (queue full) becomes 503 overloaded + Retry-After in app.py.
"""

from __future__ import annotations

from service.imaging import ImageError, ImageTooLargeError, UnsupportedFormatError


class ApiError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.headers = headers or {}

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


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Unavailable(ApiError):
    status, code = 503, "not_ready"


class InsufficientStorage(ApiError):
    status, code = 507, "insufficient_storage"


def image_error(exc: ImageError, name: str) -> ApiError:
    """The API error for an image that cannot be used, naming which one."""
    message = f"{name}: {exc}"
    if isinstance(exc, UnsupportedFormatError):
        return UnsupportedMediaType(message)
    if isinstance(exc, ImageTooLargeError):
        return PayloadTooLarge(message)
    return InvalidInput(message, code="invalid_image")
