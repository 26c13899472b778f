"""Range filters under writes: a field's sorted numbers take writes beside them, and merge them in
every PENDING_MAX writes, without ever answering differently from a scan of the live images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from service import metadata_index
from service.filters import parse_filter
from service.metadata_index import MetadataIndex


def numbers(doc: dict, name: str) -> list[float]:
    value = doc.get(name)
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


def some(doc: dict, name: str, test: Callable[[float], bool]) -> bool:
    """MongoDB: a range matches a list when one of its numbers is in range."""
    return any(test(v) for v in numbers(doc, name))


RANGES: list[tuple[dict, Callable[[dict], bool]]] = [
    ({"n": {"$gt": 0.5}}, lambda d: some(d, "n", lambda v: v > 0.5)),
    (
        {"n": {"$gte": 0.25, "$lt": 0.75}},
        lambda d: some(d, "n", lambda v: v >= 0.25) and some(d, "n", lambda v: v < 0.75),
    ),
    ({"n": {"$lte": 0.1}}, lambda d: some(d, "n", lambda v: v <= 0.1)),
    (
        {"n": {"$lt": 0.9}, "kind": "a"},
        lambda d: some(d, "n", lambda v: v < 0.9) and d["kind"] == "a",
    ),
    (
        {"$or": [{"n": {"$gt": 0.95}}, {"m": {"$lte": 3}}]},
        lambda d: some(d, "n", lambda v: v > 0.95) or some(d, "m", lambda v: v <= 3),
    ),
]


def random_doc(rng: np.random.Generator) -> dict:
    doc: dict = {"kind": str(rng.choice(["a", "b"]))}
    shape = rng.integers(4)
    if shape == 0:
        doc["n"] = float(rng.random())
    elif shape == 1:
        doc["n"] = [float(rng.random()), float(rng.random())]  # two numbers for one image
    elif shape == 2:
        doc["n"] = "not a number"
    if rng.random() < 0.5:
        doc["m"] = int(rng.integers(10))
    return doc


@pytest.mark.parametrize("pending_max", [1, 7, 4096])
def test_ranges_under_writes_match_a_scan_of_the_live_images(
    monkeypatch: pytest.MonkeyPatch, pending_max: int
) -> None:
    monkeypatch.setattr(metadata_index, "PENDING_MAX", pending_max)
    rng = np.random.default_rng(pending_max)
    index, live, label = MetadataIndex(), {}, 0
    for step in range(600):
        if live and rng.random() < 0.4:  # a delete, or the old half of an upsert
            gone = int(rng.choice(list(live)))
            index.remove(gone, live.pop(gone))
        else:
            label += 1
            live[label] = random_doc(rng)
            index.add(label, live[label])
        if step % 20 == 0 or step == 599:
            for where, matches in RANGES:
                found = set(np.flatnonzero(index.mask(parse_filter(where))).tolist())
                expected = {key for key, doc in live.items() if matches(doc)}
                assert found == expected, (step, where)


def test_a_write_after_sorting_does_not_sort_again(monkeypatch: pytest.MonkeyPatch) -> None:
    index = MetadataIndex()
    for label in range(1, 101):
        index.add(label, {"n": float(label)})
    where = parse_filter({"n": {"$gt": 90}})
    assert set(np.flatnonzero(index.mask(where))) == set(range(91, 101))
    sorts = []
    real = metadata_index._SortedNumbers.of
    monkeypatch.setattr(
        metadata_index._SortedNumbers,
        "of",
        classmethod(lambda cls, pairs: sorts.append(len(pairs)) or real(pairs)),
    )
    index.add(101, {"n": 95.0})
    index.remove(95, {"n": 95.0})
    assert set(np.flatnonzero(index.mask(where))) == set(range(91, 102)) - {95}
    assert sorts == [1]  # only the one number written since, never the hundred sorted ones
