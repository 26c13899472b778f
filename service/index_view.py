"""This process's view of the gallery: a search index derived from the store's change log.

Each process (each worker, each replica) keeps its own. Before a read, the gallery calls
`catch_up(store.last_seq())`; the view replays the changes it has not seen, in seq order. Labels
are seqs, so replaying is idempotent. A view whose position fell below the log's truncation
point rebuilds from the rows. A rebuild (another index kind, too many tombstones) builds beside
the live index, catches up and swaps, so searches never wait for it.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from service.config import Settings
from service.index import Hit, VectorIndex
from service.store.base import LogTruncated, Store

log = logging.getLogger(__name__)


class IndexView:
    def __init__(self, store: Store, dim: int, settings: Settings) -> None:
        self._store = store
        self._dim = dim
        self._settings = settings
        self.index = self.new_index(self.kind_for(0))
        self._catching = threading.Lock()  # one catch-up or swap at a time

    # --- building ---------------------------------------------------------------------------
    def options(self) -> dict:
        s = self._settings
        return {
            "hnsw_m": s.hnsw_m,
            "ef_construction": s.hnsw_ef_construction,
            "ef_search": s.hnsw_ef_search,
        }

    def kind_for(self, count: int) -> str:
        if self._settings.index_kind != "auto":
            return self._settings.index_kind
        return "hnsw" if count >= self._settings.approximate_index_min_vectors else "flat"

    def new_index(self, kind: str) -> VectorIndex:
        return VectorIndex(self._dim, kind, **self.options())

    def build(self) -> VectorIndex:
        """A fresh index of every row up to the store's current seq (not yet visible)."""
        upto = self._store.last_seq()
        index = self.new_index(self.kind_for(self._store.count()))
        for batch in self._store.rows(max_seq=upto):
            index.add(batch)
        index.seq = upto
        return index

    def install(self, index: VectorIndex) -> None:
        """Make `index` (loaded from a snapshot, or built) the live one, caught up."""
        with self._catching:
            self.index, _ = self._caught_up(index)

    def rebuild(self) -> None:
        started = time.monotonic()
        old = self.index
        self.install(self.build())
        log.info(
            "index rebuilt",
            extra={
                "kind": self.index.kind,
                "vectors": self.index.count,
                "was": old.kind,
                "seconds": round(time.monotonic() - started, 1),
            },
        )

    # --- following the log ------------------------------------------------------------------
    def catch_up(self, upto: int) -> int:
        """Apply every change up to at least `upto`; how many were applied."""
        if self.index.seq >= upto:
            return 0
        with self._catching:
            if self.index.seq >= upto:
                return 0
            self.index, applied = self._caught_up(self.index)
            return applied

    def _caught_up(self, index: VectorIndex) -> tuple[VectorIndex, int]:
        """`index` with every change since its seq applied, or a fresh build when the log no
        longer reaches back that far. Callers hold `_catching`."""
        try:
            changes = self._store.changes_since(index.seq)
        except LogTruncated as exc:
            log.warning("index fell behind the pruned log; rebuilding", extra={"why": str(exc)})
            index = self.build()
            changes = self._store.changes_since(index.seq)
        with index.lock.write():
            for change in changes:
                index.apply(change)
        return index, len(changes)

    # --- reads ------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        index = self.index
        with index.lock.read():
            return index.search(queries, k)

    def vector_of(self, image_id: str) -> np.ndarray | None:
        index = self.index
        with index.lock.read():
            return index.vector_of(image_id)
