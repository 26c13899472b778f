"""The gallery: the only way in for routes. It keeps the store (truth) and this process's index
view (derived from the store's change log) in step, for every collection.

- **Writes** commit to the store first; the view then catches up from the log. A crash between
  the two loses nothing: the log still holds the change.
- **Collections** each have their own ids and index; every method takes the collection's name
  (`default` unless given). An unknown one raises `UnknownCollection`, checked against the store
  only when an answer comes back empty, so a hit costs no extra query.
- **Reads** first bring the view up to the store's latest seq (one cheap query), so a write
  acknowledged by any process is seen by the next read in every process. While the store cannot
  be reached, searches answer from the view as it stands (follower.py).
- **Models.** The view holds one model's vectors: the one the store serves (models.py). Writes
  bring a vector of every model the store keeps. A read that embedded its query with another
  model than the view's (the serving model switched meanwhile) raises `ModelSwitched`: embed
  again and retry.
- **Start-up**, for a store that keeps no model yet: re-embeds the stored originals after a
  change of MODEL_DIR (reembedding.py) and keeps that model; then the follower loads the view of
  the serving model and follows the log.

Every method blocks: routes call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from service.config import Settings
from service.encoder import Encoder
from service.filters import Filter
from service.follower import Follower
from service.generation import Generations
from service.index import Hit
from service.index_options import IndexKind, IndexOptions
from service.index_view import IndexView
from service.metrics import Metrics
from service.model_vectors import VectorBuilder
from service.models import ModelSet, ModelSwitched, seed_models
from service.reembedding import check_model, upgrade_model
from service.store import (
    DEFAULT_COLLECTION,
    ImageRecord,
    NewImage,
    Store,
    StoreUnavailable,
    UnknownCollection,
)
from service.store.base import StoredModel, gallery_size

KEPT_MODELS_CACHE_S = 5.0


@dataclass(frozen=True)
class GalleryStatus:
    """What /readyz reports of this process's gallery."""

    worker: int  # this process's pid
    indexed: int
    index_kind: IndexKind  # the default collection's
    index_tombstones: int
    index_unreadable: int
    index_seq: int  # the last log entry this process's index includes
    index_generation: str | None  # the generation it maps (generation.py)
    collections: int
    store: str  # the backend
    store_available: bool
    images: int | None  # stored, when the store answered
    store_seq: int | None

    def to_dict(self) -> dict:
        """As JSON: what the store could not tell is left out."""
        return {key: value for key, value in asdict(self).items() if value is not None}


class Gallery:
    def __init__(
        self,
        store: Store,
        seed_encoder: Encoder,
        settings: Settings,
        models: ModelSet | None = None,
    ) -> None:
        self._store = store
        self._models = models or ModelSet(store, settings, Metrics())
        self._seed_encoder = seed_encoder  # MODEL_DIR's: only for a store keeping no model yet
        self._settings = settings
        self._options = IndexOptions.from_settings(settings)
        self._follower = Follower(store, settings, self._view_of)
        self._builder = VectorBuilder(store, self._models, self._follower.stopping)
        self._lifecycle = threading.Lock()  # close() waits for an open() in progress
        self._kept: tuple[float, int, list[StoredModel]] | None = None

    def _view_of(self, model_version: str) -> IndexView:
        dim = self._models.encoder(model_version).info.dim
        generations = Generations(Path(self._settings.data_dir), dim, self._options, model_version)
        return IndexView(self._store, self._settings, dim, self._options, generations)

    @property
    def _view(self) -> IndexView:
        view = self._follower.view
        assert view is not None, "the gallery is not open"
        return view

    @property
    def serving(self) -> str:
        """The model whose vectors this process searches (and whose vectors queries need)."""
        return self._view.model_version

    def _serving_view(self, model_version: str | None) -> IndexView:
        """The view, which must hold `model_version`'s vectors (None: whichever serves)."""
        view = self._view
        if model_version not in (None, view.model_version):
            raise ModelSwitched(f"the serving model is now {view.model_version}")
        return view

    def chore(self, name: str) -> AbstractContextManager[None]:
        """Hold a store-wide lock: one process at a time does the chore `name`."""
        return self._store.chore(name)

    # --- start-up and shutdown ----------------------------------------------------------------
    def open(self) -> None:
        """Bring the stored vectors to this model, load or build the index, start following.
        Returns early, unopened, once `close` has been called."""
        with self._lifecycle:
            self._store.migrate()
            if not self._store.kept_models():
                info = self._seed_encoder.info
                check_model(self._store, info.name, info.version)
                if self._store.model_version() != info.version and not self.upgrade_model():
                    return
            serving = seed_models(self._store, self._seed_encoder, self._settings.model_dir)
            self._models.adopt(self._seed_encoder)  # kept or not: refresh drops it if not
            self._models.refresh()
            if self._follower.stopping.is_set():
                return
            self._follower.start(serving)
            self._builder.start()

    def upgrade_model(self) -> bool:
        """Re-embed what another model made (reembedding.py); False when `close` interrupted."""
        return upgrade_model(self._store, self._seed_encoder, self._follower.stopping)

    def close(self) -> None:
        """Stop following, unmap the index generation, and leave the log's consumer list. Waits for
        an `open` in progress to stop at its next step."""
        self._follower.stop()
        with self._lifecycle:
            self._builder.join(timeout_s=10)
            self._follower.finish()

    # --- collections --------------------------------------------------------------------------
    def collections(self) -> list[dict]:
        """Every collection: its name, image count and this process's index kind."""
        self._follower.fresh()
        return [self._describe(name, count) for name, count in self._store.collections()]

    def collection(self, name: str) -> dict:
        self._require(name)
        return self._describe(name, self._store.count(name))

    def _describe(self, name: str, count: int) -> dict:
        return {"name": name, "count": count, "index_kind": self._view.kind_of(name)}

    def create_collection(self, name: str) -> bool:
        """Create `name`; False when it exists already."""
        return self._store.create_collection(name)

    def drop_collection(self, name: str) -> bool:
        """Delete `name` and its images, in every process's index; False when unknown."""
        change = self._store.drop_collection(name)
        if change is None:
            return False
        self._follower.caught_up_to(change.seq)
        return True

    def _require(self, name: str) -> None:
        if not self._store.has_collection(name):
            raise UnknownCollection(f"no collection named {name!r}")

    # --- writes -------------------------------------------------------------------------------
    def upsert(
        self,
        images: list[NewImage],
        model_version: str | None = None,
        *,
        collection: str = DEFAULT_COLLECTION,
    ) -> list[bool]:
        """Store and index; per image, whether it was created (False: replaced). `vector` is
        `model_version`'s (None: the serving model's), `more_vectors` every other kept model's
        (ModelsChanged if one lacks)."""
        results = self._store.upsert(images, model_version or self.serving, collection)
        self._follower.caught_up_to(max(change.seq for _, change in results))
        return [created for created, _ in results]

    def delete(self, image_id: str, *, collection: str = DEFAULT_COLLECTION) -> bool:
        change = self._store.delete(image_id, collection)
        if change is None:
            self._require(collection)
            return False
        self._follower.caught_up_to(change.seq)
        return True

    # --- reads --------------------------------------------------------------------------------
    def search(
        self,
        queries: np.ndarray,
        k: int,
        model_version: str | None = None,
        *,
        collection: str = DEFAULT_COLLECTION,
        where: Filter | None = None,
    ) -> list[list[Hit]]:
        """Per query (made by `model_version`; None: the serving model), the k nearest images
        of `collection` (among those matching `where`); ModelSwitched when another model serves
        now."""
        self._follower.fresh()
        view = self._serving_view(model_version)
        if not view.has(collection) and not self._follower.store_down:
            self._require(collection)
        return view.search(collection, queries, k, where)

    def vector_of(
        self,
        image_id: str,
        model_version: str | None = None,
        *,
        collection: str = DEFAULT_COLLECTION,
    ) -> np.ndarray | None:
        """The image's vector made by `model_version` (ModelSwitched: another model serves)."""
        self._follower.fresh()
        vector = self._serving_view(model_version).vector_of(collection, image_id)
        if vector is None and not self._follower.store_down:
            self._require(collection)
        return vector

    def get(self, image_id: str, *, collection: str = DEFAULT_COLLECTION) -> ImageRecord | None:
        record = self._store.get(image_id, collection)
        if record is None:
            self._require(collection)
        return record

    def content(
        self, image_id: str, *, collection: str = DEFAULT_COLLECTION
    ) -> tuple[ImageRecord, bytes] | None:
        record = self.get(image_id, collection=collection)
        if record is None:
            return None
        content = self._store.read_original(record.sha256)
        return None if content is None else (record, content)

    def page(
        self,
        *,
        after: int,
        limit: int,
        collection: str = DEFAULT_COLLECTION,
        where: Filter | None = None,
    ) -> tuple[list[ImageRecord], int | None]:
        """A page of `collection`'s records after a cursor, and the next cursor (None at the
        end). Unfiltered: in upload order, the cursor a row key. Filtered: the matches come from
        this process's index, in order of their last change, the cursor a seq."""
        if where is None:
            records, cursor = self._store.page(after_key=after, limit=limit, collection=collection)
        else:
            self._follower.fresh()
            seqs = self._view.matching(collection, where)
            seqs = seqs[np.searchsorted(seqs, after, side="right") :][: limit + 1]
            records = self._store.by_seq(seqs[:limit].tolist())
            cursor = int(seqs[limit - 1]) if len(seqs) > limit else None
        if not records:
            self._require(collection)
        return records, cursor

    def count(self, collection: str | None = None) -> int:
        return self._store.count(collection)

    def kept_models(self) -> list[dict]:
        """Every model the store keeps: whether it serves, and how many of the images have its
        vector (a count over the whole gallery, so kept for a few seconds)."""
        now = time.monotonic()
        if self._kept is None or now - self._kept[0] > KEPT_MODELS_CACHE_S:
            models = self._store.models()
            self._kept = (now, gallery_size(models, self._store), models)
        _, images, models = self._kept
        return [
            {
                "name": m.name,
                "version": m.version,
                "dim": m.dim,
                "serving": m.active,
                "vectors": m.vectors,
                "images": images,
            }
            for m in models
        ]

    @property
    def indexed(self) -> int:
        return self._view.totals().vectors

    @property
    def unreadable(self) -> int:
        """Stored images left out of search because their metadata cannot be read."""
        return self._view.totals().unreadable

    def status(self) -> GalleryStatus:
        store_seq = self._follower.fresh()
        images = None
        if store_seq is not None:
            try:
                images = self._store.count()
            except StoreUnavailable:
                store_seq = None
        totals = self._view.totals()
        return GalleryStatus(
            worker=os.getpid(),
            indexed=totals.vectors,
            index_kind=self._view.kind_of(DEFAULT_COLLECTION),
            index_tombstones=totals.tombstones,
            index_unreadable=totals.unreadable,
            index_seq=self._view.seq,
            index_generation=generation.name if (generation := self._view.generation) else None,
            collections=totals.collections,
            store=self._store.backend,
            store_available=store_seq is not None,
            images=images,
            store_seq=store_seq,
        )
