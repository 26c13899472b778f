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

Callers hold the vector index's lock: reads under its read lock, writes under its write lock.
The caches are filled under the read lock; two readers may both fill one, with equal arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from service.filters import And, Equals, Exists, Filter, Not, Range, Scalar

Key = tuple[str, Any]  # a scalar, tagged with its type: true and 1 are different values

PENDING_MAX = 4096  # writes piled up beside a field's sorted numbers before they are merged in


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
        labels = np.array([label for _, label in pairs], dtype=np.int64)
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
            for key in _keys(value):
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
            for key in _keys(value):
                labels = entry.postings.get(key)
                if labels is not None:
                    labels.discard(label)
                    if not labels:
                        del entry.postings[key]
                entry.posting_arrays.pop(key, None)
            entry.remove_numbers(label)
            if not entry.present:
                del self._fields[name]

    # --- reads --------------------------------------------------------------------------------
    def mask(self, where: Filter) -> np.ndarray:
        """(size,) bool: True at the live labels whose metadata matches."""
        if isinstance(where, Equals):
            return self._equals(where.field, where.values)
        if isinstance(where, Range):
            return self._range(where)
        if isinstance(where, Exists):
            entry = self._fields.get(where.field)
            mask = self._empty()
            if entry is not None:
                mask[entry.with_field()] = True
            return mask if where.present else self._live_mask() & ~mask
        if isinstance(where, Not):
            return self._live_mask() & ~self.mask(where.inner)
        if isinstance(where, And):
            mask = self._live_mask()
            for part in where.parts:
                mask &= self.mask(part)
            return mask
        mask = self._empty()
        for part in where.parts:
            mask |= self.mask(part)
        return mask

    def _empty(self) -> np.ndarray:
        return np.zeros(self.size, dtype=bool)

    def _live_mask(self) -> np.ndarray:
        if self._live_array is None:
            self._live_array = _labels(self._live)
        mask = self._empty()
        mask[self._live_array] = True
        return mask

    def _equals(self, name: str, values: tuple[Scalar, ...]) -> np.ndarray:
        entry = self._fields.get(name)
        mask = self._empty()
        for value in values:
            key = value_key(value)
            if key == ("null", None):  # MongoDB: null also matches a missing field
                mask |= self.mask(Exists(name, False))
            if entry is not None and key is not None:
                mask[entry.posting(key)] = True
        return mask

    def _range(self, where: Range) -> np.ndarray:
        mask = self._empty()
        entry = self._fields.get(where.field)
        if entry is None:
            return mask
        found, removed = entry.within(where)
        mask[found] = True
        mask[removed] = False
        return mask


def _keys(value: Any) -> list[Key]:
    """A metadata value's posting keys: its own, or its scalar elements' when it is a list."""
    values = value if isinstance(value, list) else [value]
    keys = [value_key(v) for v in values]
    return list(dict.fromkeys(k for k in keys if k is not None))
