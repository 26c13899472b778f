"""The frozen metadata index: written once, memory-mapped, and answering every filter as the live
MetadataIndex and a slow reading of the docs do; opening it reads nothing per image."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from service.filters import parse_filter
from service.frozen_metadata import FrozenMetadata, write_frozen_metadata
from service.metadata_index import MetadataIndex
from testkit.filters import LABELS, SEMANTICS, SEMANTICS_DOCS, matches, random_filter

# Values the other fields take, as scalars, in lists and in objects: equal numbers written
# differently (0, -0.0; 1, 1.0), true beside 1, "1" beside 1, null.
SCALARS = [None, True, False, 0, -0.0, 1, 1.0, 2.5, -3, "1", "a", "boot", ""]
BOUNDS = [-3, 0, 1, 2.5, 10]
FIELDS = ["x", "tags", "label", "price", "missing"]


def frozen(directory: Path, docs: list[dict | None]) -> FrozenMetadata:
    write_frozen_metadata(directory, docs)
    return FrozenMetadata.open(directory)


def live_index(docs: list[dict | None]) -> MetadataIndex:
    index = MetadataIndex()
    for position, doc in enumerate(docs):
        if doc is not None:
            index.add(position, doc)
    return index


def pick(rng: np.random.Generator, values: list) -> object:
    return values[int(rng.integers(len(values)))]


def random_doc(rng: np.random.Generator) -> dict | None:
    """None (a hole) or a doc whose label and price stay within what `matches` reads, beside
    fields of every other kind of value."""
    if rng.random() < 0.15:
        return None
    price = int(rng.integers(1000))
    doc: dict = {"price": price if rng.random() < 0.5 else price + 0.5}
    if rng.random() < 0.9:
        doc["label"] = pick(rng, LABELS)
    for name in ("x", "tags"):
        shape = rng.integers(5)
        if shape == 1:
            doc[name] = pick(rng, SCALARS)
        elif shape == 2:
            doc[name] = [pick(rng, SCALARS) for _ in range(rng.integers(4))]
        elif shape == 3:
            doc[name] = {"nested": pick(rng, SCALARS)}
    return doc


def random_where(rng: np.random.Generator, depth: int = 0) -> dict:
    """Any filter over any of the fields, nested up to two levels."""
    name = pick(rng, FIELDS)
    kinds = [
        lambda: {name: pick(rng, SCALARS)},
        lambda: {name: {"$ne": pick(rng, SCALARS)}},
        lambda: {name: {"$in": [pick(rng, SCALARS) for _ in range(rng.integers(4))]}},
        lambda: {name: {"$nin": [pick(rng, SCALARS), pick(rng, SCALARS)]}},
        lambda: {name: {str(pick(rng, ["$gt", "$gte", "$lt", "$lte"])): pick(rng, BOUNDS)}},
        lambda: {name: {"$exists": bool(rng.integers(2))}},
        lambda: {"$and": [random_where(rng, depth + 1) for _ in range(rng.integers(1, 3))]},
        lambda: {"$or": [random_where(rng, depth + 1) for _ in range(rng.integers(1, 3))]},
    ]
    return kinds[int(rng.integers(len(kinds) if depth < 2 else len(kinds) - 2))]()


@pytest.mark.parametrize("seed", range(5))
def test_masks_equal_the_live_index_and_a_scan(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    docs = [random_doc(rng) for _ in range(int(rng.integers(1, 400)))]
    opened, index = frozen(tmp_path / "metadata", docs), live_index(docs)
    assert opened.size == len(docs)
    for i in range(300):
        where = random_filter(rng) if i % 2 else random_where(rng)
        got = opened.mask(parse_filter(where))
        live = index.mask(parse_filter(where))
        assert got.shape == (len(docs),)
        assert np.array_equal(got, np.pad(live, (0, len(docs) - len(live)))), where
        if i % 2:  # a filter `matches` reads
            scan = [doc is not None and matches(doc, where) for doc in docs]
            assert got.tolist() == scan, where


@pytest.fixture(scope="module")
def semantics(tmp_path_factory: pytest.TempPathFactory) -> FrozenMetadata:
    docs = [SEMANTICS_DOCS.get(position) for position in range(7)]  # 0 and 6: no image
    return frozen(tmp_path_factory.mktemp("semantics"), docs)


@pytest.mark.parametrize(("where", "expected"), SEMANTICS)
def test_filters_follow_mongodb_semantics(
    semantics: FrozenMetadata, where: dict, expected: set[int]
) -> None:
    assert set(np.flatnonzero(semantics.mask(parse_filter(where)))) == expected


@pytest.mark.parametrize(
    "docs",
    [[], [None, None, None], [{"o": {}}, None, {"o": []}], [{"o": {"p": 1}, "n": 1}]],
    ids=["no docs", "only holes", "a field without keys", "no strings"],
)
def test_empty_arrays_open_and_answer(tmp_path: Path, docs: list[dict | None]) -> None:
    opened, index = frozen(tmp_path / "metadata", docs), live_index(docs)
    for where in [
        {},
        {"o": None},
        {"o": {"$ne": None}},
        {"o": {"$exists": True}},
        {"o": {"$exists": False}},
        {"o": {"$gt": 0}},
        {"o": {"$in": ["a", 1, True]}},
        {"n": 1},
        {"$or": [{"n": {"$lte": 1}}, {"o": "a"}]},
    ]:
        live = index.mask(parse_filter(where))
        got = opened.mask(parse_filter(where))
        assert np.array_equal(got, np.pad(live, (0, len(docs) - len(live)))), where


def test_opening_reads_nothing_per_image(tmp_path: Path) -> None:
    n = 200_000
    docs: list[dict | None] = [{"label": LABELS[i % 5], "n": i / 2} for i in range(n)]
    docs[7] = None
    write_frozen_metadata(tmp_path / "metadata", docs)
    tracemalloc.start()
    opened = FrozenMetadata.open(tmp_path / "metadata")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 100_000  # one array of positions alone would take 1.6 MB
    assert all(isinstance(array, np.memmap) for array in opened.arrays.values())
    boots = opened.mask(parse_filter({"label": "boot", "n": {"$lt": 100}}))
    assert np.flatnonzero(boots).tolist() == list(range(0, 200, 5))
