"""A serving process's heap under glibc: few malloc arenas, and freed memory given back.

glibc keeps what a process frees for reuse, in holes between live allocations that it never
returns on its own, in up to 8 arenas per core; after a worker drops an index's delta (a
generation switch) those holes would stay its private memory until the next one."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from typing import Any

M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
SERVING_ARENAS = 2


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
