"""Giving freed memory back to the system. glibc keeps what a process frees for reuse, in holes
between live allocations that it never returns on its own; after a worker drops an index's delta
(a generation switch) those holes would stay its private memory until the next one."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None


_TRIM = _malloc_trim()


def give_back_freed_memory() -> None:
    """malloc_trim(0): every wholly free page of every malloc arena goes back to the system."""
    if _TRIM is not None:
        _TRIM(0)
