"""The serving process's heap (service/heap.py): few malloc arenas, counted by glibc itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Eight threads allocate at once, then glibc's malloc_stats() lists one "Arena N:" per arena.
THREADS_ALLOCATE = """
import ctypes, sys, threading
from service.heap import limit_malloc_arenas
if sys.argv[1] == "limit":
    limit_malloc_arenas()
together = threading.Barrier(8)
def allocate():
    together.wait()
    held = [ctypes.create_string_buffer(1000) for _ in range(2000)]
    together.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL("libc.so.6").malloc_stats()
"""


def arenas(mode: str, **env: str) -> int:
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    done = subprocess.run(
        [sys.executable, "-c", THREADS_ALLOCATE, mode],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
    )
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_serving_process_keeps_to_two_arenas_unless_the_environment_says() -> None:
    assert arenas("none") > 2  # glibc's default: an arena per thread, up to 8 per core
    assert arenas("limit") == 2
    assert arenas("limit", MALLOC_ARENA_MAX="4") > 2  # the user's choice stands


def test_while_serving_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    import gc

    from service.heap import SERVING_GC_THRESHOLD, settled_heap

    before = gc.get_threshold()
    start_up_object = [["made before serving"]]  # lists are always tracked by the GC
    assert any(o is start_up_object for o in gc.get_objects())
    with settled_heap():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (SERVING_GC_THRESHOLD, *before[1:])
        assert not any(o is start_up_object for o in gc.get_objects())  # out of the GC's sight
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
