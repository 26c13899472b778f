"""Byte strings in two files, memory-mapped: `<name>.bin` (the strings back to back) and
`<name>.idx.npy` (n + 1 offsets). A generation keeps its images' ids and metadata this way, so a
worker holds no Python object per image: it reads the k strings a search returns."""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import overload

import numpy as np

from service.durable import fsync_file

PREFIX_BYTES = 32  # of each string, sorted by numpy (sorted_order)


class BlobWriter:
    """Writes `<name>.bin` and, on a clean exit, its offsets; both flushed to disk."""

    def __init__(self, directory: Path, name: str) -> None:
        self._directory, self._name = directory, name
        self._file = open(directory / f"{name}.bin", "wb")  # noqa: SIM115 (closed in __exit__)
        self._offsets = array("q", [0])  # machine numbers: 10M Python ints took 360 MB
        self._end = 0

    def add(self, string: bytes) -> None:
        self._file.write(string)
        self._end += len(string)
        self._offsets.append(self._end)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._file.close()
        if kind is None:
            fsync_file(self._directory / f"{self._name}.bin")
            offsets = np.frombuffer(self._offsets, dtype=np.int64)
            save_array(self._directory / f"{self._name}.idx.npy", offsets)


def save_array(path: Path, array: np.ndarray) -> None:
    np.save(path, array)
    fsync_file(path)


def load_array(path: Path) -> np.ndarray:
    """Mapped read-only (an empty one is read: numpy cannot map zero bytes)."""
    array = np.load(path, mmap_mode="r")
    return np.load(path) if array.size == 0 else array


class Blobs(Sequence[bytes]):
    def __init__(self, directory: Path, name: str) -> None:
        self.offsets = load_array(directory / f"{name}.idx.npy")
        path = directory / f"{name}.bin"
        empty = path.stat().st_size == 0
        self.data = np.zeros(0, np.uint8) if empty else np.memmap(path, np.uint8, mode="r")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.data[start:end].tobytes()


def sorted_order(strings: Blobs) -> np.ndarray:
    """Positions of `strings` in bytewise order (for `find`). Sorted by numpy on each string's
    first PREFIX_BYTES (zero-padded, then its length: a shorter string first, as bytes order
    "ab" before "ab\\0"); only runs of longer strings that share those bytes are compared whole,
    in Python. Sorting every string in Python took 10M Python objects."""
    starts, lengths = strings.offsets[:-1], np.diff(strings.offsets)
    prefix = np.zeros((len(starts), PREFIX_BYTES), np.uint8)
    for j in range(PREFIX_BYTES):
        has = lengths > j
        prefix[has, j] = strings.data[starts[has] + j]
    words = prefix.view(">u8")  # (n, PREFIX_BYTES / 8), compared as big-endian numbers
    order = np.lexsort((lengths, *words.T[::-1]))
    long = lengths[order] > PREFIX_BYTES
    tied = long[1:] & long[:-1]  # neighbours in the order, both longer and (below) alike
    for column in words.T:  # a column at a time: 10M strings' whole prefixes would take 320 MB
        in_order = column[order]
        tied &= in_order[1:] == in_order[:-1]
    for start, stop in _runs_of(tied):  # [start, stop] of order: one shared prefix, all longer
        run = order[start : stop + 1]
        order[start : stop + 1] = sorted(run.tolist(), key=strings.__getitem__)
    return order.astype(np.int64)


def _runs_of(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) of each run of True in `flags`, as positions of the pairs it joins: a True
    at i joins items i and i + 1."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(
        zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True)
    )


def find(strings: Sequence[bytes], order: np.ndarray, wanted: bytes) -> int | None:
    """The position of `wanted` in `strings`, by binary search over `order`; None if absent."""
    at = bisect.bisect_left(range(len(order)), wanted, key=lambda j: strings[int(order[j])])
    if at < len(order) and strings[int(order[at])] == wanted:
        return int(order[at])
    return None
