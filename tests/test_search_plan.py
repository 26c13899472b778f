"""How a filtered search runs: search_plan.py's cost model picks what measured cheaper, so the
brute-force limit grows with the index instead of being one number for every size."""

from __future__ import annotations

from service.index import ivf_lists
from service.index_options import IndexKind, IndexOptions
from service.search_plan import choose

OPTIONS = IndexOptions()


def brute_force_limit(kind: IndexKind, count: int, k: int = 10) -> int:
    """The most matches still scored directly (the choice flips once, as matches grow)."""
    lists = ivf_lists(count) if kind == "ivf" else 0
    low, high = 1, count
    while low < high:
        middle = (low + high + 1) // 2
        if choose(kind, count, middle, k, OPTIONS, lists) == "brute force":
            low = middle
        else:
            high = middle - 1
    return low


def test_what_was_measured_cheaper_is_chosen_at_each_size() -> None:
    # BENCHMARKS.md §4, 5,000 matches: at 100k the selector took 0.82 ms and brute force 8 ms;
    # at 1M the selector 14.5 ms and brute force 8 ms. 50,000 of 1M: 2.4 against 25 ms.
    assert choose("hnsw", 100_000, 5_000, 10, OPTIONS) == "selector"
    assert choose("hnsw", 1_000_000, 5_000, 10, OPTIONS) == "brute force"
    assert choose("hnsw", 1_000_000, 50_000, 10, OPTIONS) == "selector"
    # BENCHMARKS.md §7, IVF: 5,000 of 1M scored directly in 3.2 ms, through a selector 6.3 ms;
    # 10,000 of 2M: 14.2 against 8.7 ms.
    assert choose("ivf", 1_000_000, 5_000, 10, OPTIONS, 4096) == "brute force"
    assert choose("ivf", 2_000_000, 10_000, 10, OPTIONS, 4096) == "selector"


def test_the_brute_force_limit_grows_with_the_index() -> None:
    for kind in ("hnsw", "ivf"):
        limits = [brute_force_limit(kind, n) for n in (100_000, 1_000_000, 10_000_000)]
        assert limits[0] < limits[1] < limits[2], (kind, limits)
    assert brute_force_limit("hnsw", 1_000_000, k=100) > brute_force_limit("hnsw", 1_000_000)


def test_where_a_selector_search_would_miss_matches_they_are_scored_directly() -> None:
    # 500 of 1M: efSearch would have to be 40,000 (it stops at 4,096: recall 0.73 measured)
    assert choose("hnsw", 1_000_000, 500, 10, OPTIONS) == "brute force"
    assert choose("hnsw", 10_000_000, 40_000, 10, OPTIONS) == "brute force"


def test_common_matches_oversample_on_hnsw_and_use_a_selector_elsewhere() -> None:
    assert choose("hnsw", 1_000_000, 500_000, 10, OPTIONS) == "oversample"
    assert choose("ivf", 2_000_000, 1_000_000, 10, OPTIONS, 4096) == "selector"
    assert choose("flat", 50_000, 30_000, 10, OPTIONS) == "selector"
    assert choose("flat", 50_000, 20_000, 10, OPTIONS) == "brute force"
    assert choose("hnsw", 1_000_000, 0, 10, OPTIONS) == "none"


def test_a_fixed_limit_replaces_the_model() -> None:
    fixed = IndexOptions(brute_force_max_matches=100)
    assert choose("hnsw", 1_000_000, 100, 10, fixed) == "brute force"
    assert choose("hnsw", 1_000_000, 101, 10, fixed) == "selector"
