"""Metadata filters: the parser's refusals, MongoDB's semantics on the metadata index, and a
filtered search's exactness on real FAISS indexes (flat and HNSW, every search plan)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from service.filters import FilterError, parse_filter
from service.index import VectorIndex
from service.index_options import IndexOptions
from service.metadata_index import MetadataIndex
from service.store.base import RowBatch
from testkit.filters import LABELS, SEMANTICS, SEMANTICS_DOCS, matches, random_filter


@pytest.fixture(scope="module")
def metadata() -> MetadataIndex:
    index = MetadataIndex()
    for label, doc in SEMANTICS_DOCS.items():
        index.add(label, doc)
    index.add(6, {"label": "gone"})
    index.remove(6, {"label": "gone"})
    return index


@pytest.mark.parametrize(("where", "expected"), SEMANTICS)
def test_filters_follow_mongodb_semantics(
    metadata: MetadataIndex, where: dict, expected: set[int]
) -> None:
    assert set(np.flatnonzero(metadata.mask(parse_filter(where)))) == expected


@pytest.mark.parametrize(
    ("where", "names"),
    [
        ([], "filter must be a JSON object, not a list"),
        ({"$and": {}}, "filter.$and must be a non-empty list"),
        ({"$or": []}, "filter.$or must be a non-empty list"),
        (
            {"$and": [{"a": 1}, {"price": {"$gt": "x"}}]},
            "filter.$and[1].price.$gt must be a number",
        ),
        ({"$not": {"a": 1}}, "filter.$not: unknown operator"),
        ({"a": {"$regex": "x"}}, "filter.a.$regex: unknown operator"),
        ({"a": {"b": 1}}, "filter.a must be a value"),
        ({"a": {"$eq": 1, "b": 2}}, "filter.a must be a value"),
        ({"a": {}}, "filter.a must not be an empty object"),
        ({"a": [1, 2]}, "filter.a must be a string, number, boolean or null, not a list"),
        ({"a": {"$in": "x"}}, "filter.a.$in must be a list"),
        ({"a": {"$nin": [1, {"b": 2}]}}, "filter.a.$nin[1] must be a string"),
        ({"a": {"$exists": 1}}, "filter.a.$exists must be true or false"),
        ({"a": {"$lt": True}}, "filter.a.$lt must be a number, not a boolean"),
        ({"": 1}, "a field name must not be empty"),
    ],
)
def test_malformed_filters_are_refused_naming_the_bad_part(where: object, names: str) -> None:
    with pytest.raises(FilterError) as raised:
        parse_filter(where)
    assert names in str(raised.value)


def test_deeply_nested_filters_are_refused_not_recursed_into() -> None:
    where: dict = {"a": 1}
    for _ in range(100):
        where = {"$and": [where]}
    with pytest.raises(FilterError, match="nest at most"):
        parse_filter(where)


def gallery(n: int = 2000, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    docs = [{"label": LABELS[i % 5], "price": int(rng.integers(0, 1000))} for i in range(n)]
    docs[7]["label"] = docs[1234]["label"] = docs[1999]["label"] = "rare"
    return vectors, docs


def exact_top_k(
    vectors: np.ndarray, docs: list[dict], query: np.ndarray, where: dict, k: int
) -> list[str]:
    allowed = np.array([matches(doc, where) for doc in docs])
    scores = np.where(allowed, vectors @ query, -np.inf)
    best = np.argsort(-scores, kind="stable")[: min(k, int(allowed.sum()))]
    return [f"img{i}" for i in best]


def filled_index(kind: str, vectors: np.ndarray, docs: list[dict], **options) -> VectorIndex:
    import orjson

    index = VectorIndex(vectors.shape[1], kind, IndexOptions(**options))
    n = len(docs)
    index.add(
        RowBatch(
            seqs=np.arange(1, n + 1, dtype=np.int64),
            vectors=vectors,
            ids=[f"img{i}" for i in range(n)],
            metadata=[orjson.dumps(doc).decode() for doc in docs],
        )
    )
    return index


PLANS = {  # the thresholds that force each way of searching
    "brute force": {"brute_force_max_matches": 10**9},
    "selector": {"brute_force_max_matches": 0, "oversample_min_share": 1.0},
    "oversample": {"brute_force_max_matches": 0, "oversample_min_share": 1e-9},
}


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
@pytest.mark.parametrize("plan", [*PLANS, "default"])
def test_filtered_search_returns_the_top_k_among_the_matches(kind: str, plan: str) -> None:
    vectors, docs = gallery()
    index = filled_index(kind, vectors, docs, **PLANS.get(plan, {}))
    rng = np.random.default_rng(1)
    k, recalls = 10, []
    for _ in range(50):
        where = random_filter(rng)
        query = vectors[int(rng.integers(len(vectors)))] + 0.3 * rng.standard_normal(32)
        query = (query / np.linalg.norm(query)).astype(np.float32)
        expected = exact_top_k(vectors, docs, query, where, k)
        got = [hit.id for hit in index.search(query[None, :], k, parse_filter(where))[0]]
        assert len(got) == len(expected)
        if kind == "flat" or plan == "brute force":
            assert got == expected, where
        recalls.append(len(set(got) & set(expected)) / max(1, len(expected)))
    assert np.mean(recalls) >= 0.95


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_filter_that_matches_three_images_returns_exactly_those_best_first(kind: str) -> None:
    vectors, docs = gallery()
    index = filled_index(kind, vectors, docs, brute_force_max_matches=0)
    query = vectors[1234]
    hits = index.search(query[None, :], 10, parse_filter({"label": "rare"}))[0]
    assert [h.id for h in hits] == exact_top_k(vectors, docs, query, {"label": "rare"}, 10)
    assert len(hits) == 3 and hits[0].id == "img1234" and hits[0].metadata["label"] == "rare"
    assert index.search(query[None, :], 10, parse_filter({"label": "none"}))[0] == []


def test_hnsw_keeps_its_recall_when_one_in_a_thousand_images_match() -> None:
    vectors, docs = gallery(n=20_000, seed=3)
    for i, doc in enumerate(docs):
        doc["label"] = "needle" if i % 1000 == 0 else doc["label"]
    index = filled_index("hnsw", vectors, docs, brute_force_max_matches=0)
    rng = np.random.default_rng(4)
    recalls = []
    for _ in range(20):
        query = vectors[int(rng.integers(len(vectors)))]
        expected = exact_top_k(vectors, docs, query, {"label": "needle"}, 10)
        got = [h.id for h in index.search(query[None, :], 10, parse_filter({"label": "needle"}))[0]]
        assert len(got) == 10
        recalls.append(len(set(got) & set(expected)) / 10)
    assert np.mean(recalls) >= 0.95


def test_tune_changes_how_a_built_index_searches() -> None:
    vectors, docs = gallery()
    index = filled_index("hnsw", vectors, docs)
    assert index.plan(100, 10) == "brute force"
    index.tune(ef_search=200, brute_force_max_matches=0, oversample_min_share=1.0)
    assert faiss.downcast_index(index._index.index).hnsw.efSearch == 200
    assert index.plan(100, 10) == "selector" and index.plan(index.count, 10) == "oversample"
    index.tune(oversample_min_share=1e-9)
    assert index.plan(100, 10) == "oversample"
