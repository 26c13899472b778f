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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.filters import Filter
from service.index import (
    Hit,
    IndexKind,
    IndexOptions,
    SnapshotError,
    VectorIndex,
    load_snapshot,
    snapshot_bytes,
)
from service.store.base import Change, LogTruncated, Store

log = logging.getLogger(__name__)

Indexes = dict[str, VectorIndex]


@dataclass(frozen=True)
class IndexTotals:
    """The view's indexes summed over collections."""

    vectors: int
    tombstones: int
    unreadable: int  # stored rows left out: their metadata cannot be read
    collections: int


class IndexView:
    def __init__(self, store: Store, dim: int, options: IndexOptions) -> None:
        self._store = store
        self._dim = dim
        self._options = options
        self._indexes: Indexes = {}  # collection → its index; one without images may be absent
        self.seq = 0  # the last log entry this view has applied
        self._catching = threading.Lock()  # one catch-up or swap at a time

    # --- building ---------------------------------------------------------------------------
    def _new_index(self, kind: IndexKind) -> VectorIndex:
        return VectorIndex(self._dim, kind, self._options)

    def _build_one(self, collection: str, upto: int) -> VectorIndex:
        """A fresh index of `collection`'s rows up to seq `upto` (not yet visible)."""
        index = self._new_index(self._options.kind_for(self._store.count(collection)))
        for batch in self._store.rows(collection, max_seq=upto):
            index.add(batch)
        index.seq = upto
        return index

    def _build(self) -> tuple[Indexes, int]:
        """Fresh indexes of every collection up to the store's current seq."""
        upto = self._store.last_seq()
        return {name: self._build_one(name, upto) for name, _ in self._store.collections()}, upto

    def _install(self, indexes: Indexes, seq: int) -> None:
        """Make `indexes` (loaded from a snapshot, or built) the live ones, caught up."""
        with self._catching:
            self._indexes, self.seq, _ = self._caught_up(indexes, seq)

    def open(self, snapshot: Path, model_version: str) -> int | None:
        """Load the snapshot file (or, when it is missing, damaged or of another model, build
        from the rows) and catch up; the seq the snapshot covered, None when built."""
        try:
            indexes, seq = load_snapshot(
                snapshot, model_version=model_version, options=self._options
            )
            covered: int | None = seq
        except SnapshotError as exc:
            log.warning("rebuilding the index from the store", extra={"why": str(exc)})
            (indexes, seq), covered = self._build(), None
        self._install(indexes, seq)
        log.info(
            "index ready",
            extra={
                "vectors": self.totals().vectors,
                "replayed": self.seq - seq,
                "collections": len(self._indexes),
            },
        )
        return covered

    def rebuild(self, collection: str | None = None) -> None:
        """Rebuild one collection's index, or (None) every one."""
        started = time.monotonic()
        try:
            if collection is None:
                self._install(*self._build())
            else:
                self._rebuild_one(collection)
        except LogTruncated:
            self._install(*self._build())
        log.info(
            "index rebuilt",
            extra={
                "collection": collection or "(all)",
                "vectors": self.totals().vectors,
                "seconds": round(time.monotonic() - started, 1),
            },
        )

    def _rebuild_one(self, collection: str) -> None:
        fresh = {collection: self._build_one(collection, self._store.last_seq())}
        with self._catching:  # no catch-up between reading the changes and the swap
            changes = self._store.changes_since(fresh[collection].seq)
            self._apply(fresh, changes, only=collection)
            if collection in fresh:  # else it was dropped meanwhile
                self._indexes[collection] = fresh[collection]

    def due_for_rebuild(self) -> str | None:
        """A collection whose index its size or tombstones call to rebuild, if any."""
        for name, index in list(self._indexes.items()):
            if index.due_for_rebuild:
                return name
        return None

    # --- following the log ------------------------------------------------------------------
    def catch_up(self, upto: int) -> int:
        """Apply every change up to at least `upto`; how many were applied."""
        if self.seq >= upto:
            return 0
        with self._catching:
            if self.seq >= upto:
                return 0
            self._indexes, self.seq, applied = self._caught_up(self._indexes, self.seq)
            return applied

    def _caught_up(self, indexes: Indexes, seq: int) -> tuple[Indexes, int, int]:
        """`indexes` at `seq` with every change since applied, or fresh ones when the log no
        longer reaches back that far; the new position and how many changes. Callers hold
        `_catching`."""
        try:
            changes = self._store.changes_since(seq)
        except LogTruncated as exc:
            log.warning("index fell behind the pruned log; rebuilding", extra={"why": str(exc)})
            indexes, seq = self._build()
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
                index = indexes[change.collection] = self._new_index(self._options.kind_for(0))
            with index.lock.write():
                index.apply(change)

    # --- reads ------------------------------------------------------------------------------
    def has(self, collection: str) -> bool:
        """Whether `collection` has an index here (one without images may have none)."""
        return collection in self._indexes

    def kind_of(self, collection: str) -> IndexKind:
        index = self._indexes.get(collection)
        return index.kind if index is not None else self._options.kind_for(0)

    def totals(self) -> IndexTotals:
        indexes = list(self._indexes.values())
        return IndexTotals(
            vectors=sum(index.count for index in indexes),
            tombstones=sum(index.tombstones for index in indexes),
            unreadable=sum(index.unreadable for index in indexes),
            collections=len(indexes),
        )

    def search(
        self, collection: str, queries: np.ndarray, k: int, where: Filter | None = None
    ) -> list[list[Hit]]:
        index = self._indexes.get(collection)
        if index is None:
            return [[] for _ in queries]
        with index.lock.read():
            return index.search(queries, k, where)

    def matching(self, collection: str, where: Filter) -> np.ndarray:
        """The labels (seqs) of `collection`'s images that match `where`, ascending."""
        index = self._indexes.get(collection)
        if index is None:
            return np.zeros(0, dtype=np.int64)
        with index.lock.read():
            return np.flatnonzero(index.matching(where))

    def vector_of(self, collection: str, image_id: str) -> np.ndarray | None:
        index = self._indexes.get(collection)
        if index is None:
            return None
        with index.lock.read():
            return index.vector_of(image_id)

    def snapshot(self, model_version: str) -> tuple[bytes, int]:
        """A snapshot file's content of every index, consistent at one log position."""
        with self._catching:  # every write to a live index happens under it
            content = snapshot_bytes(self._indexes, seq=self.seq, model_version=model_version)
            return content, self.seq
