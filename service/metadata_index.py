"""The metadata of one collection's indexed images, arranged so that a filter (filters.py)
evaluates to a boolean mask over labels in a few milliseconds at a million images, with no
database round trip. It lives beside the collection's vector index and follows the same log.

Per field it keeps postings (scalar value → labels) for equality and $in, each image's numbers
for ranges, and the labels that have the field for $exists. The numpy arrays a query reads (a
posting's labels, a field's labels that have it) are made on first use and dropped when a write
touches them, so a steady gallery answers from arrays, and writes stay O(fields) each.

A field's numbers, sorted for ranges, are not dropped by a write: once sorted, writes pile up
beside them (numbers added, labels removed) and a range query reads both. When PENDING_MAX have
piled up, the writer merges them in (O(n), about 10 ms at a million numbers). So a gallery taking
writes never re-sorts on the read path.

A filter tree is evaluated by `evaluate`, over any `MetadataSource`: this index, or a generation's
frozen, memory-mapped one (frozen_metadata.py), so both answer every filter alike.

Callers hold the vector index's lock: reads under its read lock, writes under its write lock.
The caches are filled under the read lock; two readers may both fill one, with equal arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from service.filters import And, Equals, Exists, Filter, Not, Range

Key = tuple[str, Any]  # a scalar, tagged with its type: true and 1 are different values

PENDING_MAX = 4096  # writes piled up beside a field's sorted numbers before they are merged in
_NO_LABELS = np.zeros(0, dtype=np.int64)


def value_key(value: Any) -> Key | None:
    """The posting key of a scalar metadata value; None for what filters never equal."""
    if value is None:
        return ("null", None)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value)) if math.isfinite(value) else None
    if isinstance(value, str):
        return ("string", value)
    return None


def _labels(values: Any) -> np.ndarray:
    return np.fromiter(values, dtype=np.int64, count=len(values))


@dataclass(frozen=True)
class _SortedNumbers:
    """A field's numbers and their labels, by value."""

    values: np.ndarray  # float64, ascending
    labels: np.ndarray  # int64

    @classmethod
    def of(cls, pairs: list[tuple[float, int]]) -> _SortedNumbers:
        values = np.array([v for v, _ in pairs], dtype=np.float64)
        return cls.by_value(values, np.array([label for _, label in pairs], dtype=np.int64))

    @classmethod
    def by_value(cls, values: np.ndarray, labels: np.ndarray) -> _SortedNumbers:
        """Numbers and their labels, in any order, sorted by number (ties keep their order)."""
        order = np.argsort(values, kind="stable")
        return cls(values[order], labels[order])

    def within(self, where: Range) -> np.ndarray:
        """The labels whose number satisfies `where` (a label once per number)."""
        side: Literal["left", "right"] = "right" if where.op in ("$gt", "$lte") else "left"
        cut = int(np.searchsorted(self.values, where.bound, side=side))
        return self.labels[cut:] if where.op in ("$gt", "$gte") else self.labels[:cut]

    def merged(self, added: _SortedNumbers, removed: set[int]) -> _SortedNumbers:
        keep = ~np.isin(self.labels, _labels(removed)) if removed else slice(None)
        values, labels = self.values[keep], self.labels[keep]
        at = np.searchsorted(values, added.values, side="right")
        return _SortedNumbers(
            np.insert(values, at, added.values), np.insert(labels, at, added.labels)
        )


@dataclass
class _Field:
    postings: dict[Key, set[int]] = field(default_factory=dict)
    numbers: dict[int, tuple[float, ...]] = field(default_factory=dict)  # label → its numbers
    present: set[int] = field(default_factory=set)
    # Caches, made on first use:
    posting_arrays: dict[Key, np.ndarray] = field(default_factory=dict)
    present_array: np.ndarray | None = None
    # Ranges: the numbers sorted, and the writes since (see the module docstring).
    sorted_numbers: _SortedNumbers | None = None
    added: list[tuple[float, int]] = field(default_factory=list)
    added_sorted: _SortedNumbers | None = None  # `added` as arrays, made on first use
    removed: set[int] = field(default_factory=set)  # labels with numbers in sorted_numbers

    def posting(self, key: Key) -> np.ndarray:
        array = self.posting_arrays.get(key)
        if array is None:
            array = self.posting_arrays[key] = _labels(self.postings.get(key, ()))
        return array

    def with_field(self) -> np.ndarray:
        if self.present_array is None:
            self.present_array = _labels(self.present)
        return self.present_array

    def within(self, where: Range) -> tuple[np.ndarray, np.ndarray]:
        """Labels whose number satisfies `where`, and labels to leave out (removed since the
        numbers were sorted)."""
        if self.sorted_numbers is None:
            pairs = [(v, label) for label, vs in self.numbers.items() for v in vs]
            self.sorted_numbers = _SortedNumbers.of(pairs)  # nothing piles up before this
        found = self.sorted_numbers.within(where)
        if self.added:
            if self.added_sorted is None:
                self.added_sorted = _SortedNumbers.of(self.added)
            found = np.concatenate([found, self.added_sorted.within(where)])
        return found, _labels(self.removed)

    def add_numbers(self, label: int, numbers: list[float]) -> None:
        self.numbers[label] = tuple(numbers)
        if self.sorted_numbers is not None:
            self.added.extend((v, label) for v in numbers)
            self.added_sorted = None
            self._merge_when_due()

    def remove_numbers(self, label: int) -> None:
        if self.numbers.pop(label, None) is None or self.sorted_numbers is None:
            return
        pending = [(v, other) for v, other in self.added if other != label]
        if len(pending) == len(self.added):
            self.removed.add(label)  # it is in sorted_numbers
        else:
            self.added, self.added_sorted = pending, None
        self._merge_when_due()

    def _merge_when_due(self) -> None:
        if self.sorted_numbers is None or len(self.added) + len(self.removed) < PENDING_MAX:
            return
        self.sorted_numbers = self.sorted_numbers.merged(
            _SortedNumbers.of(self.added), self.removed
        )
        self.added, self.added_sorted, self.removed = [], None, set()


class MetadataIndex:
    def __init__(self) -> None:
        self._fields: dict[str, _Field] = {}
        self._live: set[int] = set()
        self._live_array: np.ndarray | None = None
        self.size = 0  # masks cover labels 0 .. size-1

    # --- writes -------------------------------------------------------------------------------
    def add(self, label: int, metadata: dict) -> None:
        self._live.add(label)
        self._live_array = None
        self.size = max(self.size, label + 1)
        for name, value in metadata.items():
            entry = self._fields.setdefault(name, _Field())
            entry.present.add(label)
            entry.present_array = None
            numbers = []
            for key in value_keys(value):
                entry.postings.setdefault(key, set()).add(label)
                entry.posting_arrays.pop(key, None)
                if key[0] == "number":
                    numbers.append(key[1])
            if numbers:
                entry.add_numbers(label, numbers)

    def remove(self, label: int, metadata: dict) -> None:
        self._live.discard(label)
        self._live_array = None
        for name, value in metadata.items():
            entry = self._fields.get(name)
            if entry is None:
                continue
            entry.present.discard(label)
            entry.present_array = None
            for key in value_keys(value):
                labels = entry.postings.get(key)
                if labels is not None:
                    labels.discard(label)
                    if not labels:
                        del entry.postings[key]
                entry.posting_arrays.pop(key, None)
            entry.remove_numbers(label)
            if not entry.present:
                del self._fields[name]

    # --- reads (a MetadataSource) ------------------------------------------------------------
    def mask(self, where: Filter) -> np.ndarray:
        """(size,) bool: True at the live labels whose metadata matches."""
        return evaluate(self, where)

    def posting(self, name: str, key: Key) -> np.ndarray:
        entry = self._fields.get(name)
        return _NO_LABELS if entry is None else entry.posting(key)

    def with_field(self, name: str) -> np.ndarray:
        entry = self._fields.get(name)
        return _NO_LABELS if entry is None else entry.with_field()

    def within(self, where: Range) -> tuple[np.ndarray, np.ndarray]:
        entry = self._fields.get(where.field)
        return (_NO_LABELS, _NO_LABELS) if entry is None else entry.within(where)

    def live(self) -> np.ndarray:
        if self._live_array is None:
            self._live_array = _labels(self._live)
        return self._live_array


class MetadataSource(Protocol):
    """What a filter reads: the labels (positions) of a field's values, as int arrays."""

    @property
    def size(self) -> int: ...  # masks cover labels 0 .. size-1

    def posting(self, name: str, key: Key) -> np.ndarray:
        """The labels whose field `name` has the scalar `key` (or, a list, has it among them)."""

    def with_field(self, name: str) -> np.ndarray:
        """The labels that have field `name`, whatever its value."""

    def within(self, where: Range) -> tuple[np.ndarray, np.ndarray]:
        """The labels with a number in `where.field` in range, and labels to leave out of those
        (removed since the numbers were sorted)."""

    def live(self) -> np.ndarray:
        """The labels of live images."""


def evaluate(source: MetadataSource, where: Filter) -> np.ndarray:
    """(source.size,) bool: True at the live labels whose metadata matches `where`."""
    if isinstance(where, Equals):
        mask = _mask(source, _NO_LABELS)
        for value in where.values:
            key = value_key(value)
            if key == ("null", None):  # MongoDB: null also matches a missing field
                mask |= evaluate(source, Exists(where.field, False))
            if key is not None:
                mask[source.posting(where.field, key)] = True
        return mask
    if isinstance(where, Range):
        found, left_out = source.within(where)
        mask = _mask(source, found)
        mask[left_out] = False
        return mask
    if isinstance(where, Exists):
        mask = _mask(source, source.with_field(where.field))
        return mask if where.present else _mask(source, source.live()) & ~mask
    if isinstance(where, Not):
        return _mask(source, source.live()) & ~evaluate(source, where.inner)
    if isinstance(where, And):
        mask = _mask(source, source.live())
        for part in where.parts:
            mask &= evaluate(source, part)
        return mask
    mask = _mask(source, _NO_LABELS)
    for part in where.parts:
        mask |= evaluate(source, part)
    return mask


def _mask(source: MetadataSource, labels: np.ndarray) -> np.ndarray:
    mask = np.zeros(source.size, dtype=bool)
    mask[labels] = True
    return mask


def value_keys(value: Any) -> list[Key]:
    """A metadata value's posting keys: its own, or its scalar elements' when it is a list."""
    values = value if isinstance(value, list) else [value]
    keys = [value_key(v) for v in values]
    return list(dict.fromkeys(k for k in keys if k is not None))
