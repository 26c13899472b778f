"""This process's view of the gallery: one index per collection, all derived from the store's
one change log.

Each process (each worker, each replica) keeps its own, over the newest generation it has
switched to (generation.py: every collection's index in files that all the data dir's processes
map). Before a read, the gallery calls `catch_up(store.last_seq())`; the view replays the changes
it has not seen, in seq order, each into its collection's index (collection_index.py: the
generation's part and this process's delta since; made on a collection's first change, a `drop`
forgets it). Labels are seqs and an index skips what it already includes, so replaying is
idempotent.

A newer generation is switched to whole: its indexes are made and caught up beside the live ones,
then swapped in, so a search runs on one generation from start to end. The first process to find
no usable generation (or its view fallen below the pruned log) writes one from the store's rows.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from service.collection_index import CollectionIndex
from service.compaction import CollectionState, StoreCopy, copy_store, write_store_rows
from service.config import Settings
from service.filters import Filter
from service.generation import Generation, GenerationError, Generations
from service.heap import give_back_freed_memory
from service.index import Hit
from service.index_options import IndexKind, IndexOptions
from service.store.base import Change, LogTruncated, Store

log = logging.getLogger(__name__)

# A first generation of more rows than this is written by a child process (compaction.py): the
# worker's heap then keeps nothing of building it. Fewer are written at once, in the worker (a
# child costs about a second of start-up).
IN_PROCESS_MAX_ROWS = 20_000

Indexes = dict[str, CollectionIndex]


@dataclass(frozen=True)
class IndexTotals:
    """The view's indexes summed over collections."""

    vectors: int
    tombstones: int
    unreadable: int  # stored rows left out: their metadata cannot be read
    collections: int


class IndexView:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        dim: int,
        options: IndexOptions,
        generations: Generations,
    ) -> None:
        self._store = store
        self._settings = settings  # for a child process to open the store (compaction.py)
        self._dim = dim
        self._options = options
        self._generations = generations
        self._generation: Generation | None = None
        self._indexes: Indexes = {}  # collection → its index; one without images may be absent
        self.seq = 0  # the last log entry this view has applied
        self.activated: str | None = None  # the model the last `model` entry applied names
        self._catching = threading.Lock()  # one catch-up or swap at a time

    # --- generations ------------------------------------------------------------------------
    @property
    def generation(self) -> Generation | None:
        return self._generation

    @property
    def generations(self) -> Generations:
        return self._generations

    @property
    def model_version(self) -> str:
        """The model whose vectors this view holds."""
        return self._generations.model_version

    def release(self) -> None:
        """Unmap the generation (searches still running keep their mapping)."""
        if self._generation is not None:
            self._generation.release()

    def load(self) -> None:
        """Map the newest generation (written from the store when there is none, or it is
        damaged), and catch up from its position."""
        newest = self._generations.open_current()
        self._switch_to(newest or self._write_from_store(unless_usable=True))

    def _write_from_store(self, *, unless_usable: bool) -> Generation:
        """Write a generation of the store's rows and map it. One process at a time: with
        `unless_usable`, one that waited maps what the other wrote."""
        with self._generations.writing(wait=True):
            written = self._generations.open_current() if unless_usable else None
            if written is not None:
                return written
            upto = self._store.last_seq()
            rows = sum(count for _, count in self._store.collections())
            log.info(
                "writing an index generation from the store", extra={"seq": upto, "rows": rows}
            )
            if rows > IN_PROCESS_MAX_ROWS:
                generations = self._generations
                job = StoreCopy(
                    self._settings, self._dim, self._options, generations.model_version, upto
                )
                copy_store(job)
            else:
                write_store_rows(self._store, self._generations, upto)
            self._generations.retire()
            written = self._generations.open_current(read_back=False)
        if written is None:
            raise GenerationError("the index generation just written cannot be opened")
        return written

    def switch_if_newer(self) -> bool:
        """Switch to the newest generation when another process has written one."""
        newest = self._generations.current()
        if newest is None or self._generation is None or newest == self._generation.name:
            return False
        generation = self._generations.open_current(read_back=False)
        if generation is None:
            return False
        if generation.seq <= self._generation.seq:
            generation.release()
            return False
        self._switch_to(generation)
        return True

    def _switch_to(self, generation: Generation) -> None:
        indexes = {
            name: CollectionIndex(self._dim, self._options, part, generation.seq)
            for name, part in generation.parts.items()
        }
        try:
            seq = self._replay(indexes, generation.seq)  # most of it, beside the live indexes
            with self._catching:
                seq = self._replay(indexes, seq)
                old, self._generation = self._generation, generation
                self._indexes, self.seq = indexes, max(seq, self.seq)
        except LogTruncated:
            generation.release()
            log.warning("the log no longer reaches back to the index generation; rewriting it")
            self._switch_to(self._write_from_store(unless_usable=False))
            return
        if old is not None:
            old.release()
        give_back_freed_memory()  # the old deltas' holes, which glibc would keep
        log.info(
            "index generation mapped",
            extra={
                "generation": generation.name,
                "vectors": self.totals().vectors,
                "replayed": self.seq - generation.seq,
                "collections": len(indexes),
            },
        )

    def due_for_compaction(self, compact_after_changes: int, compact_after_share: float) -> bool:
        return any(
            index.due(compact_after_changes, compact_after_share)
            for index in list(self._indexes.values())
        )

    def compaction_states(self) -> tuple[int, dict[str, CollectionState]]:
        """What the next generation is written from, consistent at one log position."""
        with self._catching:  # every write to a live index happens under it
            states = {}
            for name, index in self._indexes.items():
                with index.lock.read():
                    states[name] = index.state()
            return self.seq, states

    # --- following the log ------------------------------------------------------------------
    def catch_up(self, upto: int) -> int:
        """Apply every change up to at least `upto`; how many were applied."""
        if self.seq >= upto:
            return 0
        try:
            with self._catching:
                if self.seq >= upto:
                    return 0
                before = self.seq
                self.seq = self._replay(self._indexes, self.seq)
                return self.seq - before
        except LogTruncated:
            log.warning("the index fell behind the pruned log; rewriting the generation")
            self._switch_to(self._write_from_store(unless_usable=False))
            return 0

    def _replay(self, indexes: Indexes, seq: int) -> int:
        """Apply every change after `seq` to `indexes`; the new position."""
        changes = self._store.changes_since(seq, self._generations.model_version)
        self._apply(indexes, changes)
        return max([seq, *(c.seq for c in changes)])

    def _apply(self, indexes: Indexes, changes: list[Change]) -> None:
        for change in changes:
            if change.activates is not None:  # the serving model switches (follower.py)
                self.activated = change.activates
                continue
            if change.drop:
                indexes.pop(change.collection, None)
                continue
            index = indexes.get(change.collection)
            if index is None:
                index = indexes[change.collection] = CollectionIndex(
                    self._dim, self._options, None, change.seq - 1
                )
            with index.lock.write():
                index.apply(change)

    # --- reads ------------------------------------------------------------------------------
    def has(self, collection: str) -> bool:
        """Whether `collection` has an index here (one without images may have none)."""
        return collection in self._indexes

    def kind_of(self, collection: str) -> IndexKind:
        index = self._indexes.get(collection)
        return index.kind if index is not None else "flat"

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
            return index.labels_matching(where)

    def vector_of(self, collection: str, image_id: str) -> np.ndarray | None:
        index = self._indexes.get(collection)
        if index is None:
            return None
        with index.lock.read():
            return index.vector_of(image_id)
