"""Byte strings in two files, memory-mapped: `<name>.bin` (the strings back to back) and
`<name>.idx.npy` (n + 1 offsets). A generation keeps its images' ids and metadata this way, so a
worker holds no Python object per image: it reads the k strings a search returns."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import overload

import numpy as np

from service.durable import fsync_file


class BlobWriter:
    """Writes `<name>.bin` and, on a clean exit, its offsets; both flushed to disk."""

    def __init__(self, directory: Path, name: str) -> None:
        self._directory, self._name = directory, name
        self._file = open(directory / f"{name}.bin", "wb")  # noqa: SIM115 (closed in __exit__)
        self._offsets = [0]

    def add(self, string: bytes) -> None:
        self._file.write(string)
        self._offsets.append(self._offsets[-1] + len(string))

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
            offsets = np.array(self._offsets, dtype=np.int64)
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
        self._offsets = load_array(directory / f"{name}.idx.npy")
        path = directory / f"{name}.bin"
        empty = path.stat().st_size == 0
        self._data = np.zeros(0, np.uint8) if empty else np.memmap(path, np.uint8, mode="r")

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return self._data[start:end].tobytes()


def sorted_order(strings: Sequence[bytes]) -> np.ndarray:
    """Positions of `strings` in bytewise order (for `find`)."""
    return np.array(sorted(range(len(strings)), key=strings.__getitem__), dtype=np.int64)


def find(strings: Sequence[bytes], order: np.ndarray, wanted: bytes) -> int | None:
    """The position of `wanted` in `strings`, by binary search over `order`; None if absent."""
    at = bisect.bisect_left(range(len(order)), wanted, key=lambda j: strings[int(order[j])])
    if at < len(order) and strings[int(order[at])] == wanted:
        return int(order[at])
    return None
