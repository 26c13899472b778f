"""Typed results. Each is built from the service's JSON by `from_json`, which ignores fields a
newer service may add."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

T = TypeVar("T")


def from_json(cls: type[T], data: dict[str, Any]) -> T:
    """`cls` (a dataclass) from a JSON object, by field name."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def _numpy(rows: list[list[float]]) -> npt.NDArray[np.float32]:
    try:
        import numpy as np
    except ImportError:
        raise ImportError("numpy is not installed: pip install 'lookalike-client[numpy]'") from None
    return np.asarray(rows, dtype=np.float32)


@dataclass(frozen=True)
class Embeddings:
    """Unit vectors, one per image, in input order."""

    model: str  # the model's version
    dim: int
    embeddings: list[list[float]]

    def numpy(self) -> npt.NDArray[np.float32]:
        """(N, dim) float32; needs the numpy extra."""
        return _numpy(self.embeddings)


@dataclass(frozen=True)
class Similarity:
    """The N×N cosine-score matrix of N images."""

    model: str
    scores: list[list[float]]

    def numpy(self) -> npt.NDArray[np.float32]:
        """(N, N) float32; needs the numpy extra."""
        return _numpy(self.scores)


@dataclass(frozen=True)
class Hit:
    """A gallery image that looks like the query: score is the cosine similarity."""

    id: str
    score: float
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Uploaded:
    id: str
    created: bool  # False: an image with this id was replaced


@dataclass(frozen=True)
class ImageInfo:
    id: str
    metadata: dict[str, Any]
    sha256: str
    size: int
    format: str
    created_at: str
    updated_at: str
    model: str
    collection: str = "default"  # the collection it is in (older services: always that)


@dataclass(frozen=True)
class CollectionInfo:
    """A collection: a named gallery with its own ids and index, over the service's model."""

    name: str
    count: int  # images in it
    index_kind: str  # the answering worker's index of it: "flat" (exact) or "hnsw"


@dataclass(frozen=True)
class CreatedCollection(CollectionInfo):
    """create_collection's answer: the collection, and whether this call created it."""

    created: bool  # False: it existed already, and was left as it was


@dataclass(frozen=True)
class Page:
    items: list[ImageInfo]
    next_cursor: str | None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    dim: int


@dataclass(frozen=True)
class Limits:
    max_k: int
    max_upload_bytes: int
    max_images_per_request: int
    max_pixels: int


@dataclass(frozen=True)
class KeptModel:
    """A model the service's store keeps (`python -m service model add`): whether it serves, and
    how many of the stored images have its vector (all of them: it can be activated)."""

    name: str
    version: str
    dim: int
    serving: bool
    vectors: int
    images: int


@dataclass(frozen=True)
class ServiceInfo:
    model: ModelInfo
    auth_required: bool  # True: the service has API keys
    limits: Limits
    public_reads: bool  # True: reads need no key (always, from services older than read keys)
    kept_models: tuple[KeptModel, ...] = ()  # empty from services older than kept models
