"""One collection's index in one process: its part of the newest generation (mapped_index.py,
shared by every worker, read-only) and the delta since (a `VectorIndex` of the rows written after
the generation, private and small), with the generation's rows deleted since flagged.

A search asks both for their top k and keeps the best k of the two lists: each list is what one
index over its rows would return, so the merge is what one index over all rows would return. The
delta grows until a compaction writes the next generation (generation.py) and the process
switches to it.
"""

from __future__ import annotations

import numpy as np

from service.compaction import CollectionState
from service.filters import Filter
from service.index import Hit, ReadWriteLock, VectorIndex
from service.index_options import IndexKind, IndexOptions
from service.mapped_index import MappedIndex
from service.store.base import Change

# Fewer changes than this never call for a generation of their own: writing one costs more than
# the delta's memory (about 2 kB a change per worker) saves.
COMPACT_MIN_CHANGES = 1000


class CollectionIndex:
    def __init__(self, dim: int, options: IndexOptions, base: MappedIndex | None, seq: int) -> None:
        self.base = base
        self.options = options
        self.delta = VectorIndex(dim, "flat", options)
        self.delta.seq = seq
        self.seq = seq  # the last store change this index includes
        self.changes = 0  # applied since the generation
        self.lock = ReadWriteLock()

    # --- writes (callers hold lock.write()) ---------------------------------------------------
    def apply(self, change: Change) -> None:
        """One store change; one already included is skipped, so replaying is idempotent."""
        if change.seq <= self.seq:
            return
        if change.old_seq is not None and self.base is not None:
            self.base.delete(change.old_seq)
        self.delta.apply(change)
        self.seq = change.seq
        self.changes += 1

    # --- reads (callers hold lock.read()) -----------------------------------------------------
    @property
    def kind(self) -> IndexKind:
        return self.base.kind if self.base is not None else self.delta.kind

    @property
    def count(self) -> int:
        return (self.base.count if self.base is not None else 0) + self.delta.count

    @property
    def tombstones(self) -> int:
        """Rows of the generation deleted since, still in its files."""
        return self.base.deleted if self.base is not None else 0

    @property
    def unreadable(self) -> int:
        return (len(self.base.unreadable) if self.base is not None else 0) + self.delta.unreadable

    def due(self, compact_after_changes: int, compact_after_share: float) -> bool:
        """Whether the next generation should be written: enough changes (`compact_after_changes`
        or a share of its size, at least COMPACT_MIN_CHANGES, whichever is fewer), or a size
        that calls for another kind."""
        share = max(COMPACT_MIN_CHANGES, int(compact_after_share * self.count))
        if self.changes >= min(compact_after_changes, share):
            return True
        return self.kind != self.options.kind_for(self.count)

    def search(self, queries: np.ndarray, k: int, where: Filter | None) -> list[list[Hit]]:
        found = [
            part.search(queries, k, where)
            for part in (self.base, self.delta)
            if part is not None and part.count
        ]
        if not found:
            return [[] for _ in queries]
        if len(found) == 1:
            return found[0]
        return [sorted(a + b, key=lambda hit: -hit.score)[:k] for a, b in zip(*found, strict=True)]

    def labels_matching(self, where: Filter) -> np.ndarray:
        """The labels (seqs) of the images matching `where`, ascending: the delta's all come
        after the generation's."""
        in_delta = np.flatnonzero(self.delta.matching(where))
        if self.base is None:
            return in_delta
        return np.concatenate([self.base.labels_matching(where), in_delta])

    def vector_of(self, image_id: str) -> np.ndarray | None:
        vector = self.delta.vector_of(image_id)  # a row written since wins
        if vector is None and self.base is not None:
            vector = self.base.vector_of(image_id)
        return vector

    def state(self) -> CollectionState:
        """What the next generation is written from, as of `seq`."""
        base = self.base
        unreadable = self.delta.unreadable_rows
        if base is not None:
            unreadable |= base.unreadable
        return CollectionState(
            base=base.directory if base is not None else None,
            base_kind=base.kind if base is not None else None,
            deleted=base.deletions() if base is not None else None,
            delta=self.delta.live_rows(),
            unreadable=unreadable,
            count=self.count,
        )
