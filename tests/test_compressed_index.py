"""The compressed kind (`ivf`): IVF over 8-bit codes, only as a generation's mapped part, its exact
vectors in a file beside it. Approximate like HNSW, but filters stay correct, scored-directly
searches stay exact, and deletions are never returned."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import orjson
import pytest

from service.filters import parse_filter
from service.index import ivf_lists, ivf_over
from service.index_options import IVF_MIN_VECTORS, IndexOptions
from service.mapped_index import MappedIndex, write_part
from service.store.base import RowBatch
from testkit.filters import LABELS, matches

N, DIM, K = 6000, 32, 10


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around 60 centres, as embeddings of similar images are."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, dim))
    vectors = centres[rng.integers(0, 60, n)] + 0.5 * rng.standard_normal((n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, list[dict]]:
    vectors = clustered(N, DIM, 0)
    rng = np.random.default_rng(1)
    docs = [{"label": LABELS[i % 5], "price": int(rng.integers(0, 1000))} for i in range(N)]
    docs[17]["label"] = docs[4321]["label"] = "rare"
    return vectors, docs


@pytest.fixture(scope="module")
def part_dir(corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    vectors, docs = corpus
    folder = tmp_path_factory.mktemp("ivf") / "part"
    folder.mkdir()
    batches = [
        RowBatch(
            seqs=np.arange(start + 1, start + 1001, dtype=np.int64),
            vectors=vectors[start : start + 1000],
            ids=[f"img{i}" for i in range(start, start + 1000)],
            metadata=[orjson.dumps(doc).decode() for doc in docs[start : start + 1000]],
        )
        for start in range(0, N, 1000)
    ]
    write_part(folder, None, batches, {})
    return folder


def open_part(folder: Path, **options: object) -> MappedIndex:
    return MappedIndex(folder, "ivf", IndexOptions(kind="ivf", **options))  # type: ignore[arg-type]


def exact_top_k(vectors, docs, query, k, where: dict | None = None, gone=()) -> list[str]:
    allowed = np.array(
        [(where is None or matches(doc, where)) and i not in gone for i, doc in enumerate(docs)]
    )
    scores = np.where(allowed, vectors @ query, -np.inf)
    best = np.argsort(-scores, kind="stable")[: min(k, int(allowed.sum()))]
    return [f"img{i}" for i in best]


def queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picked = vectors[rng.integers(0, len(vectors), n)] + 0.2 * rng.standard_normal((n, DIM))
    return (picked / np.linalg.norm(picked, axis=1, keepdims=True)).astype(np.float32)


def recall(got: list[str], expected: list[str]) -> float:
    return len(set(got) & set(expected)) / max(1, len(expected))


def test_the_part_is_a_mapped_ivf_over_8_bit_codes_with_its_exact_vectors(part_dir, corpus):
    vectors, _ = corpus
    part = open_part(part_dir)
    ivf = faiss.extract_index_ivf(part._index)
    assert isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)
    assert ivf.nlist == ivf_lists(N) and ivf.nprobe == 32 and part.count == N
    assert (part_dir / "vectors.f32").stat().st_size == N * DIM * 4
    codes_and_ids, centroids = N * (DIM + 8), ivf.nlist * DIM * 4  # a code: a byte a dimension
    assert (part_dir / "index.faiss").stat().st_size < codes_and_ids + centroids + 4096
    assert np.array_equal(part.vector_of("img123"), vectors[123])


def test_unfiltered_search_finds_the_exact_top_k_at_a_high_recall(part_dir, corpus):
    vectors, docs = corpus
    shallow, deep = open_part(part_dir, ivf_nprobe=2), open_part(part_dir)
    recalls: dict[str, list[float]] = {"shallow": [], "deep": []}
    for query in queries(vectors, 50, 2):
        expected = exact_top_k(vectors, docs, query, K)
        for name, part in (("shallow", shallow), ("deep", deep)):
            hits = part.search(query[None], K)[0]
            assert len(hits) == K and [h.score for h in hits] == sorted(
                (h.score for h in hits), reverse=True
            )
            assert all(abs(h.score - vectors[int(h.id[3:])] @ query) < 0.02 for h in hits)
            recalls[name].append(recall([h.id for h in hits], expected))
    assert np.mean(recalls["deep"]) >= 0.95
    assert np.mean(recalls["shallow"]) < np.mean(recalls["deep"])  # nprobe is what it scans


@pytest.mark.parametrize(
    ("options", "plan"),
    [
        ({"brute_force_max_matches": 10**9}, "brute force"),
        ({"brute_force_max_matches": 0}, "selector"),
    ],
)
def test_a_filtered_search_returns_the_top_k_among_the_matches(part_dir, corpus, options, plan):
    vectors, docs = corpus
    part = open_part(part_dir, **options)
    recalls = []
    for i, query in enumerate(queries(vectors, 30, 3)):
        where = [{"label": LABELS[i % 5]}, {"price": {"$lt": 60}}, {"label": "rare"}][i % 3]
        parsed = parse_filter(where)
        matching = int(np.count_nonzero(part.matching(parsed)))
        assert part.plan(matching, K) == plan
        got = [h.id for h in part.search(query[None], K, parsed)[0]]
        expected = exact_top_k(vectors, docs, query, K, where)
        assert len(got) == len(expected)
        assert all(matches(docs[int(image_id[3:])], where) for image_id in got)
        if plan == "brute force":
            assert got == expected  # scored on the exact vectors
        recalls.append(recall(got, expected))
    assert np.mean(recalls) >= 0.95


def test_deleted_rows_are_never_returned_and_the_rest_still_are(part_dir, corpus):
    vectors, docs = corpus
    part = open_part(part_dir)
    query = queries(vectors, 1, 4)[0]
    first = [h.id for h in part.search(query[None], K)[0]]
    gone = {int(image_id[3:]) for image_id in first[:5]}
    for i in gone:
        part.delete(i + 1)  # labels are positions + 1
    hits = [h.id for h in part.search(query[None], K)[0]]
    assert len(hits) == K and not {f"img{i}" for i in gone} & set(hits)
    assert recall(hits, exact_top_k(vectors, docs, query, K, gone=gone)) >= 0.9
    assert part.vector_of(f"img{min(gone)}") is None
    rows = list(part.rows(part.deletions()))
    assert sum(len(batch.seqs) for batch in rows) == N - 5
    assert np.array_equal(rows[0].vectors[0], vectors[0])  # the next part gets exact vectors


def test_a_part_built_with_the_lists_of_the_one_before_skips_k_means(corpus) -> None:
    vectors, _ = corpus
    first = ivf_over(vectors)
    again = ivf_over(vectors[::-1].copy(), trained=first)  # other rows, the same lists and codes
    assert again.is_trained and again.ntotal == N
    queries_ = queries(vectors, 20, 5)
    assert np.array_equal(first.search(queries_, K)[0], again.search(queries_, K)[0])
    smaller = ivf_over(vectors[:2000], trained=first)  # fewer lists: trained again
    assert smaller.nlist == ivf_lists(2000) != first.nlist


def test_auto_picks_ivf_from_its_threshold_and_never_for_too_few_to_train():
    auto = IndexOptions(approximate_min_vectors=100, compressed_min_vectors=5000)
    assert [auto.kind_for(n) for n in (99, 100, 4999, 5000)] == ["flat", "hnsw", "hnsw", "ivf"]
    forced = IndexOptions(kind="ivf")
    assert forced.kind_for(IVF_MIN_VECTORS - 1) == "flat"
    assert forced.kind_for(IVF_MIN_VECTORS) == "ivf"


def test_lists_grow_with_the_square_root_and_k_means_always_has_enough_points():
    assert ivf_lists(1_000_000) == ivf_lists(2_000_000) == 4096
    assert ivf_lists(10_000_000) == 16_384
    for count in (IVF_MIN_VECTORS, 5000, 50_000):
        assert 16 <= ivf_lists(count) <= count // 39
