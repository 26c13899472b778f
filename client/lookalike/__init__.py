"""lookalike: a typed client for the lookalike image-similarity service, sync and async.

    from lookalike import Client, AsyncClient, NotFound

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        client.upload(["shirt.png", "dress.png"], ids=["shirt", "dress"])
        hits = client.nearest("query.png", k=5)   # [Hit(id, score, metadata)], best first
        client.create_collection("shoes")
        shoes = client.collection("shoes")         # the same gallery methods, in "shoes"
        shoes.nearest("query.png", filter={"label": "boot"})

The exceptions are drawn in lookalike._errors' docstring.
"""

from lookalike._client import AsyncClient, AsyncCollection, Client, Collection, __version__
from lookalike._errors import (
    Conflict,
    ConnectionFailed,
    Forbidden,
    Invalid,
    LookalikeError,
    NotFound,
    Overloaded,
    ServerError,
    StorageFull,
    TooLarge,
    Unauthorized,
    Unavailable,
    Unsupported,
)
from lookalike._images import ImageLike
from lookalike._types import (
    CollectionInfo,
    CreatedCollection,
    Embeddings,
    Hit,
    ImageInfo,
    KeptModel,
    Limits,
    ModelInfo,
    ServiceInfo,
    Similarity,
    Uploaded,
)

__all__ = [
    "AsyncClient",
    "AsyncCollection",
    "Client",
    "Collection",
    "CollectionInfo",
    "Conflict",
    "ConnectionFailed",
    "CreatedCollection",
    "Embeddings",
    "Forbidden",
    "Hit",
    "ImageInfo",
    "ImageLike",
    "Invalid",
    "KeptModel",
    "Limits",
    "LookalikeError",
    "ModelInfo",
    "NotFound",
    "Overloaded",
    "ServerError",
    "ServiceInfo",
    "Similarity",
    "StorageFull",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "Unsupported",
    "Uploaded",
    "__version__",
]
