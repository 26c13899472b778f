"""Generations written in a child process of their own: the next one from one process's view
(a compaction), and a first one from the store's rows (a store copy). The worker's heap then
never holds a whole collection (the child's memory goes back when it exits), and its searches
keep the GIL while the child builds and writes.

A compaction's child takes the writer's lock itself, and writes only when the generation the view
maps is still the newest: a worker killed meanwhile leaves no writer without the lock. A store
copy's child writes under the lock its parent holds while it waits.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.config import Settings
from service.generation import GenerationError, Generations, PartSource
from service.index_options import IndexKind, IndexOptions
from service.logs import configure_logging
from service.mapped_index import MappedIndex
from service.store import open_store
from service.store.base import RowBatch, Store

log = logging.getLogger(__name__)

MAX_DEAD_SHARE = 0.1  # of an HNSW part's rows, deleted, before it is built again without them
SKIPPED = 3  # the child's exit code when another writer came first


@dataclass(frozen=True)
class CollectionState:
    """What a collection's next part is written from, copied at one log position."""

    base: Path | None  # the folder of its part of the generation mapped now
    base_kind: IndexKind | None
    deleted: np.ndarray | None  # the base's deletion flags
    delta: RowBatch
    unreadable: dict[int, str]
    count: int

    def source(self, options: IndexOptions) -> PartSource:
        """How its part is written. An HNSW part is extended (its graph read back, the delta
        added, deleted rows kept as tombstones) until MAX_DEAD_SHARE of it is deleted rows;
        anything else is built again from the live rows (an IVF part with the lists of the one
        before, when their number still fits: index.ivf_over)."""
        kind = options.kind_for(self.count)
        if self.base is not None and self.deleted is not None and self.base_kind == kind == "hnsw":
            dead = np.concatenate([self.deleted, np.zeros(len(self.delta.seqs), dtype=bool)])
            if np.count_nonzero(dead) <= MAX_DEAD_SHARE * len(dead):
                base = MappedIndex(self.base, kind, options)
                rows = itertools.chain(base.rows(None), [self.delta])
                return PartSource(self.count, rows, self.unreadable, self.base, dead)
        lists_from = self.base if self.base_kind == "ivf" else None
        return PartSource(
            self.count, self._live_rows(options), self.unreadable, lists_from=lists_from
        )

    def _live_rows(self, options: IndexOptions) -> Iterator[RowBatch]:
        if self.base is not None and self.base_kind is not None:
            yield from MappedIndex(self.base, self.base_kind, options).rows(self.deleted)
        yield self.delta


@dataclass(frozen=True)
class Compaction:
    data_dir: Path
    dim: int
    options: IndexOptions
    model_version: str
    log_level: str
    newest: str  # the generation the view maps: the next is written only while it is newest
    seq: int
    states: dict[str, CollectionState]


@dataclass(frozen=True)
class StoreCopy:
    """A generation of the store's rows up to `seq`, read by the child from the store itself."""

    settings: Settings  # where the store and the data dir are
    dim: int
    options: IndexOptions
    model_version: str
    seq: int


def compact(job: Compaction) -> bool:
    """Write the next generation in a child process; whether it was written."""
    exit_code = _in_child(_write, job, "compaction")
    if exit_code not in (0, SKIPPED):
        log.error("the compaction process failed", extra={"exit_code": exit_code})
    return exit_code == 0


def copy_store(job: StoreCopy) -> None:
    """Write a generation of the store's rows in a child process (the caller holds the writer's
    lock); GenerationError when the child fails."""
    exit_code = _in_child(_copy, job, "store copy")
    if exit_code != 0:
        raise GenerationError(
            f"writing the index generation from the store failed (exit code {exit_code}); "
            "the log above says why"
        )


def write_store_rows(store: Store, generations: Generations, seq: int) -> None:
    """Write a generation of every collection's rows up to `seq`, in this process."""
    sources = {
        name: PartSource(count, store.rows(name, max_seq=seq, model=generations.model_version), {})
        for name, count in store.collections()
    }
    generations.write(seq, sources)


def _in_child(target: Callable[[Any], None], job: object, name: str) -> int | None:
    child = multiprocessing.get_context("spawn").Process(
        target=target, args=(job,), name=name, daemon=True
    )
    child.start()
    child.join()
    return child.exitcode


def _copy(job: StoreCopy) -> None:
    configure_logging(job.settings.log_level)
    store = open_store(job.settings)
    try:
        generations = Generations(
            Path(job.settings.data_dir), job.dim, job.options, job.model_version
        )
        write_store_rows(store, generations, job.seq)
    finally:
        store.close()


def _write(job: Compaction) -> None:
    configure_logging(job.log_level)
    generations = Generations(job.data_dir, job.dim, job.options, job.model_version)
    with generations.writing(wait=False) as mine:
        if not mine or generations.current() != job.newest:
            raise SystemExit(SKIPPED)
        sources = {name: state.source(job.options) for name, state in job.states.items()}
        generations.write(job.seq, sources)
        generations.retire()
