"""The exceptions: one per kind of HTTP error the service answers, under one base.

LookalikeError                .status .code .message
├── ConnectionFailed          None    the service did not answer (refused, reset, timed out)
├── Invalid                   422     undecodable image, bad parameter or collection name,
│                                     malformed filter (code "invalid_filter"); any other 400
├── NotFound                  404     unknown id, collection or model
├── Conflict                  409     a change the service refuses (deleting "default"), or
│                                     a vector another model made (code "model_mismatch")
├── Unauthorized              401     missing or wrong API key
├── Forbidden                 403     the key may not do this (a read-only key writing)
├── TooLarge                  413     body, image or pixel count over a limit
├── Unsupported               415     image format or Content-Type not allowed
├── Unavailable               503     not ready yet, or the database is away
│   └── Overloaded            503     the model queue is full (code "overloaded")
├── StorageFull               507     the service's disk or database is full
└── ServerError               500     and any other unexpected status

503s and connection failures are retried first (Client's max_retries); what is raised is the
last one. `status` and `code` are the service's own (`{"error": {"code", "message"}}`).
"""

from __future__ import annotations

from typing import Any

import httpx


class LookalikeError(Exception):
    """Base of every error this client raises about the service."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "error") -> None:
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class ConnectionFailed(LookalikeError):
    """No answer came: the connection was refused, reset or timed out."""


class Invalid(LookalikeError):
    """422: the request was understood but its content is not usable."""


class NotFound(LookalikeError):
    """404: no image (or collection, or model) with that id or name."""


class Conflict(LookalikeError):
    """409: a change the service refuses, such as deleting the collection "default", or a vector
    sent to nearest() with the version of a model the service does not serve."""


class Unauthorized(LookalikeError):
    """401: the call needs an API key (Client(api_key=...)), or the one given is wrong."""


class Forbidden(LookalikeError):
    """403: the API key is right but may not do this, such as a read-only key writing."""


class TooLarge(LookalikeError):
    """413: the body, an image or its pixel count is over the service's limit."""


class Unsupported(LookalikeError):
    """415: the image format or the Content-Type is not one the service takes."""


class Unavailable(LookalikeError):
    """503: the service is not ready, or its database is away; retry later."""


class Overloaded(Unavailable):
    """503 overloaded: the model's queue is full; retry later."""


class StorageFull(LookalikeError):
    """507: the service's disk or database is full."""


class ServerError(LookalikeError):
    """500, or a status this client does not know."""


BY_STATUS: dict[int, type[LookalikeError]] = {
    400: Invalid,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    415: Unsupported,
    422: Invalid,
    503: Unavailable,
    507: StorageFull,
}


def error_for(response: httpx.Response) -> LookalikeError:
    """The exception for an error response, from its {"error": {"code", "message"}} body (the
    OpenAI-shaped /v1 errors have both keys too); a body that is not ours (a proxy's page) keeps
    the status and a snippet of its text."""
    status = response.status_code
    code, message = "http_error", response.text[:300] or response.reason_phrase
    try:
        error: Any = response.json().get("error")
    except ValueError:
        error = None
    if isinstance(error, dict):
        code = str(error.get("code") or code)
        message = str(error.get("message") or message)
    kind = BY_STATUS.get(status, ServerError)
    if status == 503 and code == "overloaded":
        kind = Overloaded
    return kind(message, status=status, code=code)
