"""The `Store` protocol: the gallery's truth, and the change log every index is derived from.

Per image the truth holds its id, metadata, sha256, size, format, timestamps, the model version
and the vector, plus the original bytes. Every write takes the next sequence numbers (`seq`) of
the store's `changes` log, in commit order: a row's `seq` is the version of its vector and its
label in every search index, so a stale label (an old version, a deleted image) never resolves.

Writers are serialised by the log's head row, so a reader that has seen seq N has seen every
change up to N. Readers state the position they have (`changes_since`). The log is truncated only
below the slowest consumer that still counts (`ack`, `prune_log`); a reader whose position fell
below the truncation point gets `LogTruncated` and rebuilds from the rows.

The gallery holds named collections (`collections`), each with its own ids: an image is keyed by
(collection, id), and every log entry names its collection, so each process keeps one index per
collection. Deleting a collection is one log entry (`drop`) that empties its index everywhere.
`default` always exists.

Two implementations: `SQLiteStore` (one data dir, any number of processes on one machine) and
`PostgresStore` (any number of replicas on any number of machines).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service import strict_json

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
DEFAULT_COLLECTION = "default"

CONTENT_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "AVIF": "image/avif",
    "HEIF": "image/heif",  # HEIC too: image/heif names any HEIF file, whatever its codec
}


class StoreError(RuntimeError):
    """Base class of the store's own failures."""


class StoreUnavailable(StoreError):
    """The database cannot be reached right now; nothing was written. Retry later (503)."""


class StorageFullError(StoreError):
    """The data dir or database has no space left; nothing was written (507)."""


class LogTruncated(StoreError):
    """Changes after the reader's position were pruned: the reader must rebuild from the rows."""


class UnknownCollection(StoreError):
    """The collection named does not exist (404)."""


class KeyNameTaken(StoreError):
    """An API key of that name exists already (revoked ones keep their names)."""


class ModelMismatch(StoreError):
    """The store's vectors belong to another model than the one this process serves."""


class ModelsChanged(StoreError):
    """A write lacks the vector of a model the store keeps (one added since the writer last
    looked): nothing was written; embed with every kept model and write again."""


class ModelNotReady(StoreError):
    """The model cannot be switched to: unknown, or some stored images lack its vector."""


@dataclass(frozen=True)
class ModelArtifact:
    """A model as the store keeps it: its two files, addressed by the encoder's sha256."""

    version: str  # sha256 of encoder.onnx, as model.json states it
    name: str
    dim: int
    model_json: str
    onnx: bytes


@dataclass(frozen=True)
class StoredModel:
    """A kept model, without its bytes: whether it serves, and how many images have its vector."""

    version: str
    name: str
    dim: int
    added_at: float  # epoch seconds
    active: bool
    vectors: int


@dataclass(frozen=True)
class NewImage:
    id: str
    content: bytes
    format: str
    metadata: dict
    vector: np.ndarray  # made by the model the write names
    more_vectors: Mapping[str, np.ndarray] = field(default_factory=dict)  # by the kept others


@dataclass(frozen=True)
class ImageRecord:
    collection: str
    id: str
    metadata: dict
    sha256: str
    size: int
    format: str
    created_at: str
    updated_at: str
    model_version: str
    seq: int

    def to_json(self) -> dict:
        return {
            "collection": self.collection,
            "id": self.id,
            "metadata": self.metadata,
            "sha256": self.sha256,
            "size": self.size,
            "format": self.format,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "model": self.model_version,
        }


@dataclass(frozen=True)
class ApiKeyRecord:
    """A stored API key: never the key itself, only its SHA-256 (keys are random, 256 bits)."""

    id: str  # the public part of the key, shown by `keys list`
    name: str
    secret_sha256: str
    scope: str  # read, write or admin
    collections: tuple[str, ...] | None  # None: every collection
    created_at: float  # epoch seconds
    expires_at: float | None = None
    revoked_at: float | None = None


@dataclass(frozen=True)
class IndexedRow:
    """What a search index keeps of one image: its label is the row's seq."""

    id: str
    metadata: str  # JSON text, parsed only for the hits that are returned
    vector: np.ndarray  # (D,) float32


@dataclass(frozen=True)
class Change:
    """One log entry, as an index replays it: in `collection`'s index, drop `old_seq`, then add
    `row` under `seq`; or, when `drop`, forget the whole collection (it was deleted).

    `row` is None for a delete, for an upsert whose row has changed again since (a later
    change carries its current version), and for a row without a vector of the model asked.
    An entry that switches the serving model (`activates`) touches no collection."""

    seq: int
    collection: str
    old_seq: int | None
    row: IndexedRow | None
    drop: bool = False
    activates: str | None = None


@dataclass(frozen=True)
class RowBatch:
    """A chunk of current rows, for building an index from scratch."""

    seqs: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, D) float32
    ids: list[str]
    metadata: list[str]  # JSON text


def gallery_size(models: list[StoredModel], store: Store) -> int:
    """The images in the store: the serving model's vector count, which `models()` counted
    already (it has every image's vector), or a count of its own when no model is kept."""
    serving = next((m for m in models if m.active), None)
    return serving.vectors if serving is not None else store.count()


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def stored_metadata(text: str, image_id: str) -> dict:
    """A record's metadata from its stored JSON text. Text that an older, lenient lookalike let in
    (NaN, a lone surrogate) reads as {} and is logged: the row and its original stay, and
    re-uploading the image with valid metadata repairs it."""
    try:
        return strict_json.loads(text, "metadata")
    except strict_json.InvalidJSON as exc:
        log.error("image %r is served without metadata: %s", image_id, exc)
        return {}


def vector_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def vector_from(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)


def row_batch(rows: list[tuple[int, bytes, str, str]]) -> RowBatch:
    """(seq, vector, id, metadata JSON) rows → a RowBatch."""
    return RowBatch(
        seqs=np.array([r[0] for r in rows], dtype=np.int64),
        vectors=np.stack([vector_from(r[1]) for r in rows]),
        ids=[r[2] for r in rows],
        metadata=[r[3] for r in rows],
    )


def change_from(
    seq: int, collection: str, kind: str, old_seq: int | None, vector, image_id, metadata, model
) -> Change:
    row = None if vector is None else IndexedRow(image_id, metadata, vector_from(vector))
    return Change(seq, collection, old_seq, row, drop=kind == "drop", activates=model)


class Store(Protocol):
    """The gallery's source of truth and its change log (see the module docstring)."""

    backend: str  # "sqlite" or "postgresql", for status and logs

    def migrate(self) -> None:
        """Create or upgrade the schema (versioned; safe when processes start together)."""

    def close(self) -> None: ...

    # --- the model the stored vectors belong to -----------------------------------------------
    def model_version(self) -> str | None:
        """The serving (active) model's version; None for a store that has never recorded one."""

    def set_model_version(self, version: str) -> None: ...

    def previous_model(self) -> str | None:
        """The model that served before the active one, while it is kept (a rollback's target)."""

    # --- kept models (zero-downtime upgrades) -----------------------------------------------
    def add_model(self, artifact: ModelArtifact) -> bool:
        """Keep a model's files; False when they are kept already. From now on every write
        must bring its vector too (ModelsChanged)."""

    def models(self) -> list[StoredModel]:
        """Every kept model, oldest first, with how many images have its vector (a count over
        the whole gallery: for status, not for every request)."""

    def kept_models(self) -> list[str]:
        """The kept models' versions, oldest first (one small query)."""

    def model_artifact(self, version: str) -> ModelArtifact | None: ...

    def activate_model(self, version: str) -> Change:
        """Make a kept model the serving one: one log entry, after which every process answers
        with it. ModelNotReady when it is unknown or some image lacks its vector."""

    def remove_model(self, version: str) -> bool:
        """Drop a kept model that does not serve, and its vectors; False if unknown."""

    def missing_vectors(self, version: str, batch: int = 256) -> Iterator[list[ImageRecord]]:
        """Records without a vector of `version`, in chunks (building a kept model's vectors)."""

    def count_missing(self, version: str) -> int: ...

    def add_vectors(self, version: str, vectors: list[tuple[ImageRecord, np.ndarray]]) -> int:
        """`version`'s vectors for rows still at the given record's seq; how many were added."""

    def chore(self, name: str) -> AbstractContextManager[None]:
        """Hold the store-wide lock `name` (blocking): one process at a time does that chore."""

    def try_chore(self, name: str) -> AbstractContextManager[bool]:
        """Hold the lock `name` if no other holder has it: whether it is held (not waiting)."""

    # --- collections ----------------------------------------------------------------------
    def collections(self) -> list[tuple[str, int]]:
        """Every collection's name and image count, by name."""

    def has_collection(self, name: str) -> bool: ...

    def create_collection(self, name: str) -> bool:
        """Create `name`; False when it existed already."""

    def drop_collection(self, name: str) -> Change | None:
        """Delete `name` with its images (one `drop` log entry) and the originals no other row
        shares; None if unknown."""

    # --- writes (UnknownCollection when the collection does not exist) ----------------------
    def upsert(
        self, images: list[NewImage], model_version: str, collection: str = DEFAULT_COLLECTION
    ) -> list[tuple[bool, Change]]:
        """Store all images in one transaction; per image, (created, its change)."""

    def delete(self, image_id: str, collection: str = DEFAULT_COLLECTION) -> Change | None:
        """Remove the image and, if no other row shares it, its original; None if unknown."""

    def replace_vectors(
        self, updates: list[tuple[ImageRecord, np.ndarray]], model_version: str
    ) -> int:
        """Re-embedding: new vectors for rows still at the given record's seq, through the log.
        Returns how many rows changed (a row changed meanwhile is left to its new version)."""

    # --- reads ----------------------------------------------------------------------------
    def count(self, collection: str | None = None) -> int:
        """Images in `collection`, or in all of them."""

    def last_seq(self) -> int:
        """The newest committed change: one indexed query, run before every gallery read."""

    def get(self, image_id: str, collection: str = DEFAULT_COLLECTION) -> ImageRecord | None: ...

    def read_original(self, sha256: str) -> bytes | None: ...

    def sample_originals(self, size: int) -> list[str]:
        """The sha256 of up to `size` distinct originals, the same ones each time while the
        gallery stands (the smallest digests: a uniform sample, read from the index)."""

    def page(
        self, *, after_key: int, limit: int, collection: str = DEFAULT_COLLECTION
    ) -> tuple[list[ImageRecord], int | None]:
        """Records in insertion order after a cursor; the next cursor, or None at the end."""

    def by_seq(self, seqs: list[int]) -> list[ImageRecord]:
        """The records currently at these versions, in seq order (a changed one is left out)."""

    def rows(
        self, collection: str, *, max_seq: int, model: str, batch: int = 10_000
    ) -> Iterator[RowBatch]:
        """Every current row of `collection` at a version ≤ max_seq that has a vector of
        `model`, with it, in chunks (building an index)."""

    def changes_since(self, seq: int, model: str) -> list[Change]:
        """Every change after `seq`, in order, rows with their vector of `model`; LogTruncated
        if some were pruned."""

    def stale(self, model_version: str, batch: int = 256) -> Iterator[list[ImageRecord]]:
        """Records whose vectors another model made, in chunks (re-embedding)."""

    def count_stale(self, model_version: str) -> int: ...

    # --- API keys (service/keys.py) ---------------------------------------------------------
    def add_key(self, key: ApiKeyRecord) -> None:
        """Store a new key; KeyNameTaken when its name is in use."""

    def revoke_key(self, id_or_name: str) -> ApiKeyRecord | None:
        """Revoke the key with this id or name (at once, for every process); None if unknown."""

    def api_keys(self) -> list[ApiKeyRecord]:
        """Every key, revoked and expired ones too, oldest first."""

    def keys_version(self) -> int:
        """Grows with every key change: processes reload their keys when it moves (0: none)."""

    # --- the log's consumers --------------------------------------------------------------
    def ack(self, consumer: str, seq: int) -> None:
        """`consumer` (a data dir's generation, a process's index) has applied every change up
        to `seq`."""

    def forget(self, consumer: str) -> None: ...

    def prune_log(self, retention_s: float) -> int:
        """Drop changes every consumer seen within `retention_s` has applied; the new floor."""
