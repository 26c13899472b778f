"""A generation's metadata index: the metadata of the images at positions 0 .. size-1, written
once into a directory of flat arrays that every worker process memory-maps, so their pages are in
RAM once, shared, and opening costs no reading. It answers the filters MetadataIndex answers,
alike: both are sources for metadata_index.evaluate, with the same posting keys (value_keys).

Opened, it holds a few small objects per field and none per image or per distinct value:

    fields.json            {"size": n, "fields": {name: {"present": [start, stop],
                            "keys": [start, stop], "numbers": [start, stop]}}}: where each
                            field's run lies in present, in the key numbers i, and in numbers_*
    present.npy            the positions that have the field, whatever its value
    keys.npy               uint8: the null, boolean and string keys, each as bytes (_encode),
                            sorted by them within each field's run, so a key is a binary search
    key_offsets.npy        (keys + 1): key i is keys[key_offsets[i]:key_offsets[i + 1]]
    postings.npy           key after key, the positions whose value is (or lists) the key
    posting_offsets.npy    (keys + 1): key i's positions are
                            postings[posting_offsets[i]:posting_offsets[i + 1]]
    numbers_values.npy     float64: each field's numbers, ascending within its run
    numbers_positions.npy  the position of each of those numbers
    live.npy               the positions holding an image

Positions and offsets are int64: numpy indexes a mask with int32 only after converting them,
which made masks 2.5x slower. Numbers have no keys: an equality on a number is the range [v, v]
of its field's numbers (1 and 1.0 are one number there, as in value_key).

A generation is never written to again: a change goes to the next one.
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sized
from dataclasses import dataclass, field
from itertools import chain, pairwise
from pathlib import Path
from typing import BinaryIO

import numpy as np
import orjson

from service.filters import Filter, Range
from service.metadata_index import Key, _SortedNumbers, evaluate, value_keys

ARRAYS = (  # the .npy files, each one array, each field a run in it (see fields.json)
    "present",
    "keys",
    "key_offsets",
    "postings",
    "posting_offsets",
    "numbers_values",
    "numbers_positions",
    "live",
)
_NO_POSITIONS = np.zeros(0, dtype=np.int64)


def _encode(key: Key) -> bytes:
    """A null, boolean or string key's bytes: equal keys, equal bytes; others, other bytes."""
    kind, value = key
    if kind == "string":
        return b"s" + value.encode("utf-8", "surrogatepass")
    return b"n" if kind == "null" else b"t" if value else b"f"


@dataclass
class _Collected:
    """One field's entries, while writing: flat arrays of machine numbers, not Python objects
    per image (10M images with two fields took gigabytes as lists of ints and tuples)."""

    present: array = field(default_factory=lambda: array("q"))
    postings: dict[Key, array] = field(default_factory=dict)  # keys other than numbers
    number_values: array = field(default_factory=lambda: array("d"))
    number_positions: array = field(default_factory=lambda: array("q"))

    def sorted_numbers(self) -> _SortedNumbers:
        return _SortedNumbers.by_value(
            np.frombuffer(self.number_values, dtype=np.float64),
            np.frombuffer(self.number_positions, dtype=np.int64),
        )


class FrozenMetadataWriter:
    """Collects the metadata of positions 0, 1, 2 … one image at a time (`add`), then writes the
    index of them (`write`); it never holds the documents themselves."""

    def __init__(self) -> None:
        self._fields: dict[str, _Collected] = {}
        self._live = array("q")
        self.size = 0

    def add(self, doc: dict | None) -> None:
        """The parsed metadata of the next position (None: no live image there)."""
        position = self.size
        self.size += 1
        if doc is None:
            return
        self._live.append(position)
        for name, value in doc.items():
            entry = self._fields.get(name) or self._fields.setdefault(name, _Collected())
            entry.present.append(position)
            for key in value_keys(value):
                if key[0] == "number":
                    entry.number_values.append(key[1])
                    entry.number_positions.append(position)
                else:
                    entry.postings.setdefault(key, array("q")).append(position)

    def write(self, directory: Path) -> None:
        """Write the index into `directory` (made if missing). Each file is fsynced; the
        directory's own fsync, and renaming it into place, are the caller's."""
        entries = list(self._fields.values())
        keys = [sorted((_encode(k), p) for k, p in e.postings.items()) for e in entries]
        numbers = [e.sorted_numbers() for e in entries]
        all_keys = list(chain.from_iterable(keys))
        arrays = {
            "present": _flat((e.present for e in entries), np.int64),
            "keys": _flat((k for k, _ in all_keys), np.uint8),
            "key_offsets": _offsets(len(k) for k, _ in all_keys),
            "postings": _flat((p for _, p in all_keys), np.int64),
            "posting_offsets": _offsets(len(p) for _, p in all_keys),
            "numbers_values": _flat((n.values for n in numbers), np.float64),
            "numbers_positions": _flat((n.labels for n in numbers), np.int64),
            "live": np.frombuffer(self._live, dtype=np.int64),
        }
        runs = {
            "present": _runs(e.present for e in entries),
            "keys": _runs(keys),
            "numbers": _runs(e.number_values for e in entries),
        }
        layout = {
            "size": self.size,
            "fields": {
                name: {part: runs[part][i] for part in runs} for i, name in enumerate(self._fields)
            },
        }
        directory.mkdir(parents=True, exist_ok=True)
        for stem in ARRAYS:
            with open(directory / f"{stem}.npy", "wb") as file:
                np.save(file, arrays[stem])
                _sync(file)
        with open(directory / "fields.json", "wb") as file:
            file.write(orjson.dumps(layout))
            _sync(file)


def write_frozen_metadata(directory: Path, docs: Iterable[dict | None]) -> None:
    """Write the index of `docs` into `directory`: docs[i] is the parsed metadata of the image at
    position i (None: no live image there)."""
    writer = FrozenMetadataWriter()
    for doc in docs:
        writer.add(doc)
    writer.write(directory)


def _flat(chunks: Iterable[array | bytes | np.ndarray], dtype: type) -> np.ndarray:
    """The chunks (typed arrays, bytes or numpy arrays of `dtype`'s items) laid end to end."""
    parts = [np.frombuffer(c, dtype) if not isinstance(c, np.ndarray) else c for c in chunks]
    return np.concatenate([np.zeros(0, dtype), *parts]).astype(dtype, copy=False)


def _offsets(lengths: Iterable[int]) -> np.ndarray:
    """Where each of the lengths starts, laid end to end, and where the last ends."""
    return np.cumsum([0, *lengths], dtype=np.int64)


def _runs(chunks: Iterable[Sized]) -> list[list[int]]:
    """[start, stop] of each chunk, laid end to end."""
    return [[int(start), int(stop)] for start, stop in pairwise(_offsets(map(len, chunks)))]


def _sync(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())


@dataclass(frozen=True)
class _Field:
    """Where one field lies in the arrays: views and ranges, no copies."""

    present: np.ndarray
    keys: range  # its keys' numbers, in their bytes' order
    numbers: _SortedNumbers


@dataclass
class FrozenMetadata:
    """A MetadataSource over a directory write_frozen_metadata wrote, memory-mapped."""

    size: int  # masks cover positions 0 .. size-1
    fields: dict[str, _Field]
    arrays: dict[str, np.ndarray]

    @classmethod
    def open(cls, directory: Path) -> FrozenMetadata:
        layout = orjson.loads((directory / "fields.json").read_bytes())
        arrays = {stem: np.load(directory / f"{stem}.npy", mmap_mode="r") for stem in ARRAYS}
        fields = {}
        for name, run in layout["fields"].items():
            numbers = slice(*run["numbers"])
            fields[name] = _Field(
                present=arrays["present"][slice(*run["present"])],
                keys=range(*run["keys"]),
                numbers=_SortedNumbers(
                    arrays["numbers_values"][numbers], arrays["numbers_positions"][numbers]
                ),
            )
        return cls(layout["size"], fields, arrays)

    def mask(self, where: Filter) -> np.ndarray:
        """(size,) bool: True at the live positions whose metadata matches."""
        return evaluate(self, where)

    def posting(self, name: str, key: Key) -> np.ndarray:
        entry = self.fields.get(name)
        if entry is None:
            return _NO_POSITIONS
        if key[0] == "number":
            values = entry.numbers.values
            start, stop = values.searchsorted(key[1], "left"), values.searchsorted(key[1], "right")
            return entry.numbers.labels[start:stop]
        wanted = _encode(key)
        at = bisect_left(entry.keys, wanted, key=self._key_bytes)
        if at == len(entry.keys) or self._key_bytes(entry.keys[at]) != wanted:
            return _NO_POSITIONS
        offsets = self.arrays["posting_offsets"]
        i = entry.keys[at]
        return self.arrays["postings"][offsets[i] : offsets[i + 1]]

    def with_field(self, name: str) -> np.ndarray:
        entry = self.fields.get(name)
        return _NO_POSITIONS if entry is None else entry.present

    def within(self, where: Range) -> tuple[np.ndarray, np.ndarray]:
        entry = self.fields.get(where.field)
        found = _NO_POSITIONS if entry is None else entry.numbers.within(where)
        return found, _NO_POSITIONS

    def live(self) -> np.ndarray:
        return self.arrays["live"]

    def _key_bytes(self, i: int) -> bytes:
        offsets = self.arrays["key_offsets"]
        return self.arrays["keys"][offsets[i] : offsets[i + 1]].tobytes()
