"""This process's view of the gallery: one search index per collection, all derived from the
store's one change log.

Each process (each worker, each replica) keeps its own. Before a read, the gallery calls
`catch_up(store.last_seq())`; the view replays the changes it has not seen, in seq order, each
into its collection's index (made on a collection's first change; a `drop` forgets it). Labels
are seqs and an index skips what it already includes, so replaying is idempotent. A view whose
position fell below the log's truncation point rebuilds from the rows. A rebuild (of every
index, or of one whose kind or tombstones call for it) builds beside the live indexes, catches
up and swaps, so searches never wait for it.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from service.config import Settings
from service.filters import Filter
from service.index import Hit, VectorIndex, snapshot_bytes
from service.store.base import Change, LogTruncated, Store

log = logging.getLogger(__name__)

Indexes = dict[str, VectorIndex]


class IndexView:
    def __init__(self, store: Store, dim: int, settings: Settings) -> None:
        self._store = store
        self._dim = dim
        self._settings = settings
        self.indexes: Indexes = {}  # collection → its index; one without images may be absent
        self.seq = 0  # the last log entry this view has applied
        self._catching = threading.Lock()  # one catch-up or swap at a time

    # --- building ---------------------------------------------------------------------------
    def options(self) -> dict:
        s = self._settings
        return {
            "hnsw_m": s.hnsw_m,
            "ef_construction": s.hnsw_ef_construction,
            "ef_search": s.hnsw_ef_search,
            "brute_force_max_matches": s.filter_brute_force_max_matches,
            "oversample_min_share": s.filter_oversample_min_share,
        }

    def kind_for(self, count: int) -> str:
        if self._settings.index_kind != "auto":
            return self._settings.index_kind
        return "hnsw" if count >= self._settings.approximate_index_min_vectors else "flat"

    def new_index(self, kind: str) -> VectorIndex:
        return VectorIndex(self._dim, kind, **self.options())

    def build_one(self, collection: str, upto: int) -> VectorIndex:
        """A fresh index of `collection`'s rows up to seq `upto` (not yet visible)."""
        index = self.new_index(self.kind_for(self._store.count(collection)))
        for batch in self._store.rows(collection, max_seq=upto):
            index.add(batch)
        index.seq = upto
        return index

    def build(self) -> tuple[Indexes, int]:
        """Fresh indexes of every collection up to the store's current seq."""
        upto = self._store.last_seq()
        return {name: self.build_one(name, upto) for name, _ in self._store.collections()}, upto

    def install(self, indexes: Indexes, seq: int) -> None:
        """Make `indexes` (loaded from a snapshot, or built) the live ones, caught up."""
        with self._catching:
            self.indexes, self.seq, _ = self._caught_up(indexes, seq)

    def rebuild(self, collection: str | None = None) -> None:
        """Rebuild one collection's index, or (None) every one."""
        started = time.monotonic()
        try:
            if collection is None:
                self.install(*self.build())
            else:
                self._rebuild_one(collection)
        except LogTruncated:
            self.install(*self.build())
        log.info(
            "index rebuilt",
            extra={
                "collection": collection or "(all)",
                "vectors": sum(index.count for index in self.indexes.values()),
                "seconds": round(time.monotonic() - started, 1),
            },
        )

    def _rebuild_one(self, collection: str) -> None:
        fresh = {collection: self.build_one(collection, self._store.last_seq())}
        with self._catching:  # no catch-up between reading the changes and the swap
            changes = self._store.changes_since(fresh[collection].seq)
            self._apply(fresh, changes, only=collection)
            if collection in fresh:  # else it was dropped meanwhile
                self.indexes[collection] = fresh[collection]

    # --- following the log ------------------------------------------------------------------
    def catch_up(self, upto: int) -> int:
        """Apply every change up to at least `upto`; how many were applied."""
        if self.seq >= upto:
            return 0
        with self._catching:
            if self.seq >= upto:
                return 0
            self.indexes, self.seq, applied = self._caught_up(self.indexes, self.seq)
            return applied

    def _caught_up(self, indexes: Indexes, seq: int) -> tuple[Indexes, int, int]:
        """`indexes` at `seq` with every change since applied, or fresh ones when the log no
        longer reaches back that far; the new position and how many changes. Callers hold
        `_catching`."""
        try:
            changes = self._store.changes_since(seq)
        except LogTruncated as exc:
            log.warning("index fell behind the pruned log; rebuilding", extra={"why": str(exc)})
            indexes, seq = self.build()
            changes = self._store.changes_since(seq)
        self._apply(indexes, changes)
        return indexes, max([seq, *(c.seq for c in changes)]), len(changes)

    def _apply(self, indexes: Indexes, changes: list[Change], only: str | None = None) -> None:
        for change in changes:
            if only is not None and change.collection != only:
                continue
            if change.drop:
                indexes.pop(change.collection, None)
                continue
            index = indexes.get(change.collection)
            if index is None:
                index = indexes[change.collection] = self.new_index(self.kind_for(0))
            with index.lock.write():
                index.apply(change)

    # --- reads ------------------------------------------------------------------------------
    def search(
        self, collection: str, queries: np.ndarray, k: int, where: Filter | None = None
    ) -> list[list[Hit]]:
        index = self.indexes.get(collection)
        if index is None:
            return [[] for _ in queries]
        with index.lock.read():
            return index.search(queries, k, where)

    def matching(self, collection: str, where: Filter) -> np.ndarray:
        """The labels (seqs) of `collection`'s images that match `where`, ascending."""
        index = self.indexes.get(collection)
        if index is None:
            return np.zeros(0, dtype=np.int64)
        with index.lock.read():
            return np.flatnonzero(index.matching(where))

    def vector_of(self, collection: str, image_id: str) -> np.ndarray | None:
        index = self.indexes.get(collection)
        if index is None:
            return None
        with index.lock.read():
            return index.vector_of(image_id)

    def snapshot(self, model_version: str) -> tuple[bytes, int]:
        """A snapshot file's content of every index, consistent at one log position."""
        with self._catching:  # every write to a live index happens under it
            return snapshot_bytes(self.indexes, seq=self.seq, model_version=model_version), self.seq
