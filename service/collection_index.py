"""One collection's index in one process: its part of the newest generation (mapped_index.py,
shared by every worker, read-only) and the delta since (a `VectorIndex` of the rows written after
the generation, private and small), with the generation's rows deleted since flagged.

A search asks both for their top k and keeps the best k of the two lists: each list is what one
index over its rows would return, so the merge is what one index over all rows would return. The
delta grows until a compaction writes the next generation (generation.py) and the process
switches to it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from service.filters import Filter
from service.generation import PartSource
from service.index import Hit, IndexKind, IndexOptions, ReadWriteLock, VectorIndex
from service.mapped_index import MappedIndex
from service.store.base import Change, RowBatch

MAX_DEAD_SHARE = 0.1  # of an HNSW part's rows, deleted, before it is built again without them


@dataclass(frozen=True)
class CollectionState:
    """What the next generation is written from, copied at one log position."""

    base: MappedIndex | None
    deleted: np.ndarray | None  # the base's deletion flags
    delta: RowBatch
    unreadable: dict[int, str]
    count: int

    def source(self, options: IndexOptions) -> PartSource:
        """How its part of the next generation is written. An HNSW part is extended (its graph
        read back, the delta added, deleted rows kept as tombstones) until MAX_DEAD_SHARE of it
        is deleted rows; anything else is built again from the live rows."""
        kind = options.kind_for(self.count)
        base, deleted, delta = self.base, self.deleted, self.delta
        if base is not None and deleted is not None and base.kind == kind == "hnsw":
            dead = np.concatenate([deleted, np.zeros(len(delta.seqs), dtype=bool)])
            if np.count_nonzero(dead) <= MAX_DEAD_SHARE * len(dead):
                rows = itertools.chain(base.rows(None), [delta])
                return PartSource(self.count, rows, self.unreadable, base.directory, dead)
        return PartSource(self.count, self._live_rows(), self.unreadable)

    def _live_rows(self) -> Iterator[RowBatch]:
        if self.base is not None:
            yield from self.base.rows(self.deleted)
        yield self.delta


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

    def due(self, compact_after_changes: int) -> bool:
        """Whether the next generation should be written: enough changes, or a size that calls
        for another kind."""
        return self.changes >= compact_after_changes or self.kind != self.options.kind_for(
            self.count
        )

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
            base=base,
            deleted=base.deletions() if base is not None else None,
            delta=self.delta.live_rows(),
            unreadable=unreadable,
            count=self.count,
        )
