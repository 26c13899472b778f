"""A serving process's heap: few malloc arenas, freed memory given back, a quieter collector.

glibc keeps what a process frees for reuse, in holes between live allocations that it never
returns on its own, in up to 8 arenas per core; after a worker drops an index's delta (a
generation switch) those holes would stay its private memory until the next one.

Python's cyclic garbage collector runs its young generation every 700 container allocations,
about once per request, and now and then traverses every object the process holds."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
SERVING_ARENAS = 2
# Container allocations between young collections while serving (CPython's default: 700).
# Single-image /embed with 2 workers, the two in the same rounds: 1,725 requests/s against
# 1,664 at 700 (median of 5 rounds, BENCHMARKS.md §3).
SERVING_GC_THRESHOLD = 20_000


def _glibc(name: str) -> Callable[..., Any] | None:
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None


_TRIM, _MALLOPT = _glibc("malloc_trim"), _glibc("mallopt")


def limit_malloc_arenas() -> None:
    """At most SERVING_ARENAS malloc arenas in this process (unless MALLOC_ARENA_MAX says), so
    freed memory is reused rather than kept in per-thread arenas: each of 2 workers then grew
    0.74-0.84 kB per image at 100k uploads instead of 1.28-1.42 (bench/worker_memory.py,
    BENCHMARKS.md §6). Call it first thing in a serving process: it caps arenas made after it."""
    if _MALLOPT is not None and "MALLOC_ARENA_MAX" not in os.environ:
        _MALLOPT(M_ARENA_MAX, SERVING_ARENAS)


def give_back_freed_memory() -> None:
    """malloc_trim(0): every wholly free page of every malloc arena goes back to the system."""
    if _TRIM is not None:
        _TRIM(0)


@contextmanager
def settled_heap() -> Iterator[None]:
    """While serving: what start-up made (the app, its routes, the model, the index) is frozen
    out of the collector's sight (gc.freeze), and the young generation is collected every
    SERVING_GC_THRESHOLD allocations. Reference counting still frees everything at once; only
    garbage in cycles waits a little longer. Undone on the way out."""
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(SERVING_GC_THRESHOLD, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
