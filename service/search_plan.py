"""How a filtered search runs, chosen by what each way would cost for this index's size (index.py
runs them). Costs measured one query at a time on 2 cores (BENCHMARKS.md §4 and §7):

- `brute force` scores the matching vectors directly: exact, about BRUTE_FORCE_US_PER_MATCH a
  match whatever the index's size.
- `selector` on HNSW raises efSearch to SELECTOR_EF × k / share, about HNSW_US_PER_EF each; past
  MAX_SELECTOR_EF the search stops finding the matches (recall 0.73 for 500 of 1M), so brute
  force runs there whatever it costs.
- `selector` on IVF scans ivf_nprobe × share^-IVF_SELECTOR_POWER lists (recall@10 0.98–0.99
  from 50 % down to 0.5 % matching, at 1M and 2M), about IVF_US_PER_CODE a code scanned, and
  IVF_SELECTOR_US once (its bitmap and set-up).
- `oversample` (HNSW, from `oversample_min_share` matching): an unfiltered search for
  k / share × OVERSAMPLE, the mask after.

So the brute-force limit grows with the index: about √(k·n) matches for HNSW, more for IVF,
where a selector search scans codes in proportion to n. A flat index scores directly up to
FLAT_BRUTE_FORCE_MAX_MATCHES: its selector search reads every vector anyway. The setting
`filter_brute_force_max_matches`, when set, replaces the model with a fixed limit.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from service.index_options import IndexKind, IndexOptions

SearchPlan = Literal["none", "brute force", "oversample", "selector"]

OVERSAMPLE = 2.0  # an oversampled search asks for k / share × this
SELECTOR_EF = 2.0  # an HNSW selector search's efSearch: k / share × this …
MAX_SELECTOR_EF = 4096  # … at most this
IVF_SELECTOR_POWER = 1 / 3
FLAT_BRUTE_FORCE_MAX_MATCHES = 20_000

# 500 matches of 1M: 0.8 ms; 5,000: 3.2 ms; 10,000 of 2M: 14 ms; 50,000: 25 ms; 500,000: 193 ms
BRUTE_FORCE_US_PER_MATCH = 1.0
HNSW_US_PER_EF = 3.5  # efSearch 400: 0.8 ms at 100k, 2.4 ms at 1M; 4,096: 11–15 ms
IVF_US_PER_CODE = 0.03  # 2M, 4,096 lists: 256 scanned (125,000 codes) 4.7 ms, 512 7.8 ms
# As /nearest runs it, a selector search took 3.4 ms (1M) to 5.4 ms (2M) more than its scan
# alone, less the mask that brute force builds too.
IVF_SELECTOR_US = 4500


def _wanted_ef(count: int, matches: int, k: int) -> int:
    """The efSearch at which k of the visited nodes match, uncapped."""
    return math.ceil(k * count / matches * SELECTOR_EF)


def selector_ef(count: int, matches: int, k: int, options: IndexOptions) -> int:
    """An HNSW selector search's efSearch: enough visited nodes that k of them match."""
    return max(options.ef_search, min(_wanted_ef(count, matches, k), MAX_SELECTOR_EF))


def selector_nprobe(count: int, matches: int, options: IndexOptions, lists: int) -> int:
    """An IVF selector search's lists scanned: more, the fewer images match."""
    return min(lists, math.ceil(options.ivf_nprobe * (matches / count) ** -IVF_SELECTOR_POWER))


def choose(
    kind: IndexKind, count: int, matches: int, k: int, options: IndexOptions, lists: int = 0
) -> SearchPlan:
    """The plan for a filtered search of k among `matches` of `count` images (`lists`: an IVF
    index's)."""
    if not matches:
        return "none"
    if brute_force_pays(kind, count, matches, k, options, lists):
        return "brute force"
    if kind == "hnsw" and matches / count >= options.oversample_min_share:
        return "oversample"
    return "selector"


def brute_force_pays(
    kind: IndexKind, count: int, matches: int, k: int, options: IndexOptions, lists: int
) -> bool:
    if options.brute_force_max_matches is not None:
        return matches <= options.brute_force_max_matches
    if kind == "flat":
        return matches <= FLAT_BRUTE_FORCE_MAX_MATCHES
    brute_force_us = matches * BRUTE_FORCE_US_PER_MATCH
    if kind == "hnsw":
        if _wanted_ef(count, matches, k) > MAX_SELECTOR_EF:
            return True  # a selector search would miss matches
        return brute_force_us <= selector_ef(count, matches, k, options) * HNSW_US_PER_EF
    codes = selector_nprobe(count, matches, options, lists) * count / lists
    return brute_force_us <= IVF_SELECTOR_US + codes * IVF_US_PER_CODE
