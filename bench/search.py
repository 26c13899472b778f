"""Search on a realistic corpus: flat vs HNSW unfiltered, then filtered search by selectivity.

    python bench/search.py [--model models/fashion-mnist] [--sizes 100000,1000000]
        [--ef-search 64,96,128,192,256,384] [--selectivities 0.5,0.05,0.005,0.0005]

Corpus: the artifact's embeddings of the 60k Fashion-MNIST train images (`--originals`), then
of randomly augmented copies of them up to each size (shifts by up to ±3 px with zero fill,
horizontal flips, contrast and brightness, Gaussian pixel noise; seeded, in chunks, so a
smaller corpus is a prefix of a larger one). Embedding is the slow part, so the corpus is
cached in `--cache` (default bench/results/cache/), keyed by model version, originals, seed
and size; a cached larger corpus serves every smaller size. Queries: the first `--queries`
test images, which the corpus never holds. Every index is the service's own `VectorIndex`
with the service's defaults (service/config.py), searched one query at a time with k=10, as
/nearest runs them, on 2 FAISS threads.

Unfiltered: flat (exact; its answers are the truth) and HNSW at each `--ef-search`: build s,
MB (the serialised index), p50/p99 ms, recall@10.

Filtered: each image has metadata {"bucket": b}, b in 0…9999 spread evenly over the images in
a seeded random order, so {"bucket": {"$lt": s·10000}} matches a share s of them (a range
filter through the service's MetadataIndex). On the HNSW index (what the
service runs from 100k images) at the service's efSearch, each filter is searched the way
/nearest does (VectorIndex.search under its read lock, as IndexView.search calls it), with the
plan the service picks; then with each plan forced (on `--forced-queries` queries), and the
baseline a user has without filters: an unfiltered search for k=100 or 1000 (the service's
max_k), keeping the matches. Recall@10 is against the exact top 10 among the matches (numpy).
Writes RESULTS/search.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
from report import ROOT, add_results_argument, table, write
from tqdm import tqdm

from service.config import Settings
from service.encoder import Encoder, load_encoder, truncate
from service.fashion_mnist import load_split
from service.filters import parse_filter
from service.index import Hit, VectorIndex
from service.index_options import IndexOptions
from service.store.base import RowBatch

K = 10
CHUNK = 10_000  # augmented images per seeded chunk
EXACT_CHUNK = 100_000  # corpus rows scored at once for the exact top K
BUCKETS = 10_000  # values of the "bucket" field
OVERFETCH_K = (100, 1000)
DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}
OPTIONS = IndexOptions.from_settings(Settings.model_construct())  # the service's defaults
PLANS = {  # the thresholds that force each way of filtered search (VectorIndex.plan)
    "brute force": {"brute_force_max_matches": 2**62},
    "oversample": {"brute_force_max_matches": 0, "oversample_min_share": 1e-12},
    "selector": {"brute_force_max_matches": 0, "oversample_min_share": 1.0},
}

Search = Callable[[np.ndarray], list[Hit]]  # one query (1, D) → its hits


# --- the corpus ---------------------------------------------------------------------------------
def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, H, W, 1) → randomly shifted (±3 px, zero fill), flipped, contrast- and
    brightness-scaled and noised copies, uint8."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (3, 3), (3, 3), (0, 0)))
    dy, dx = rng.integers(0, 7, (2, n))
    rows = (dy[:, None] + np.arange(h))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + np.arange(w))[:, None, :]  # (N, 1, W)
    out = padded[np.arange(n)[:, None, None], rows, cols]  # (N, H, W, 1)
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, ::-1]
    contrast = rng.uniform(0.6, 1.4, (n, 1, 1, 1))
    brightness = rng.uniform(-30, 30, (n, 1, 1, 1))
    noisy = out * contrast + brightness + rng.normal(0, 8, out.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def embed(encoder: Encoder, images: np.ndarray, bar: tqdm | None = None) -> np.ndarray:
    parts = []
    for i in range(0, len(images), 1024):
        parts.append(encoder.embed_pixels(list(images[i : i + 1024])))
        if bar is not None:
            bar.update(len(parts[-1]))
    return np.concatenate(parts)


def corpus(encoder: Encoder, size: int, originals: int, seed: int, cache: Path) -> np.ndarray:
    """`size` embeddings, mapped read-only from the cache: the first `originals` train images,
    then augmented copies of them. A cached corpus of this many or more for this model,
    originals and seed serves as it is; a smaller one is extended (it is this one's prefix), so
    only the missing rows are embedded, written to disk as they come (10M take 10 GB)."""
    stem = f"corpus-{encoder.info.version[:16]}-{originals}-seed{seed}-"
    cached = sorted(
        (int(p.stem.removeprefix(stem)), p)
        for p in cache.glob(f"{stem}*.npy")
        if p.stem.removeprefix(stem).isdigit()
    )
    for have, path in cached:
        if have >= size:
            print(f"corpus of {size:,} from {path}", flush=True)
            return np.load(path, mmap_mode="r")[:size]
    have, prefix = cached[-1] if cached else (0, None)
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"{stem}{size}.partial.npy"
    out = np.lib.format.open_memmap(partial, "w+", np.float32, (size, encoder.info.dim))
    if prefix is not None:
        print(f"extending the corpus of {have:,} in {prefix}", flush=True)
        out[:have] = np.load(prefix, mmap_mode="r")
    train = load_split("train")[0][:originals]
    with tqdm(
        total=size - have, desc=f"embedding {size - have:,} images", unit="img", mininterval=5
    ) as bar:
        if have < len(train):
            out[have : len(train)] = embed(encoder, train[have:size], bar)
        for start in range(len(train), size, CHUNK):
            if start + CHUNK <= have:
                continue
            rng = np.random.default_rng([seed, start])
            images = augment(train[rng.integers(0, len(train), CHUNK)], rng)
            skip = max(have - start, 0)
            out[start + skip : start + CHUNK] = embed(encoder, images[skip : size - start], bar)
    out.flush()
    del out
    partial.rename(cache / f"{stem}{size}.npy")
    return np.load(cache / f"{stem}{size}.npy", mmap_mode="r")


# --- measuring ----------------------------------------------------------------------------------
def build(kind: str, vectors: np.ndarray, buckets: np.ndarray) -> tuple[VectorIndex, float]:
    start = time.perf_counter()
    index = VectorIndex(vectors.shape[1], kind, OPTIONS)
    labels = np.arange(len(vectors), dtype=np.int64)
    metadata = [f'{{"bucket":{b}}}' for b in buckets.tolist()]
    index.add(RowBatch(labels, vectors, [str(n) for n in labels.tolist()], metadata))
    return index, time.perf_counter() - start


def measure(search: Search, queries: np.ndarray) -> tuple[list[list[int]], dict]:
    """Each query on its own: the labels found, and p50/p99 ms."""
    found, seconds = [], []
    for q in queries:
        start = time.perf_counter()
        hits = search(q[None, :])
        seconds.append(time.perf_counter() - start)
        found.append([int(hit.id) for hit in hits])
    ms = np.array(seconds) * 1000
    p50, p99 = np.percentile(ms, [50, 99])
    return found, {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}


def exact(vectors: np.ndarray, queries: np.ndarray, labels: np.ndarray) -> list[list[int]]:
    """The true top K among `labels` for each query, scanning the corpus in chunks (a mapped
    10M corpus is never copied whole)."""
    top = min(K, len(labels))
    best_scores = np.empty((len(queries), 0), np.float32)
    best_labels = np.empty((len(queries), 0), np.int64)
    for start in range(0, len(labels), EXACT_CHUNK):
        chunk = labels[start : start + EXACT_CHUNK]
        scores = np.concatenate([best_scores, queries @ vectors[chunk].T], axis=1)
        keep = np.argpartition(-scores, top - 1, axis=1)[:, :top]
        held = best_labels.shape[1]
        earlier = np.take_along_axis(best_labels, np.minimum(keep, held - 1), axis=1) if held else 0
        best_labels = np.where(keep < held, earlier, chunk[np.maximum(keep - held, 0)])
        best_scores = np.take_along_axis(scores, keep, axis=1)
    order = np.argsort(-best_scores, axis=1)
    return np.take_along_axis(best_labels, order, axis=1).tolist()


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    """Mean share of each true top K (all the matches, when fewer) that was found."""
    shares = [len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth, strict=True)]
    return round(float(np.mean(shares)), 4)


def filtered_search(index: VectorIndex, where: dict) -> Search:
    """/nearest with a filter: IndexView.search takes the read lock and calls this."""
    parsed = parse_filter(where)

    def search(q: np.ndarray) -> list[Hit]:
        with index.lock.read():
            return index.search(q, K, parsed)[0]

    return search


def overfetched_search(index: VectorIndex, k: int, cut: int) -> Search:
    """What a user does without filters: ask for k, keep the matches, the first K of them."""

    def search(q: np.ndarray) -> list[Hit]:
        with index.lock.read():
            hits = index.search(q, k)[0]
        return [hit for hit in hits if hit.metadata["bucket"] < cut][:K]

    return search


def unfiltered_rows(
    flat: VectorIndex, hnsw: VectorIndex, queries: np.ndarray, efs: list[int], built: dict
) -> list[dict]:
    """Flat (the truth) and HNSW at each efSearch, on the same build; efSearch is then reset."""
    mb = {index.kind: index.index_bytes / 2**20 for index in (flat, hnsw)}

    def row(index: VectorIndex, found: list[list[int]], latency: dict, **extra: int) -> dict:
        return {
            "vectors": index.count,
            "dim": index.dim,
            "kind": index.kind,
            **extra,
            "build_s": round(built[index.kind], 2),
            "memory_mb": round(mb[index.kind], 1),
            **latency,
            "recall_at_10": recall(found, truth),
        }

    truth, latency = measure(lambda q: flat.search(q, K)[0], queries)
    rows = [row(flat, truth, latency)]
    for ef in efs:
        hnsw.tune(ef_search=ef)
        rows.append(row(hnsw, *measure(lambda q: hnsw.search(q, K)[0], queries), ef_search=ef))
        print(json.dumps(rows[-1]), flush=True)
    hnsw.tune(ef_search=OPTIONS.ef_search)
    return rows


def filtered_rows(
    index: VectorIndex, vectors: np.ndarray, queries: np.ndarray, share: float, forced: int
) -> list[dict]:
    """One selectivity: as the service searches, each plan forced, and the over-fetch baseline."""
    cut = round(share * BUCKETS)
    if not 0 < cut <= BUCKETS or abs(cut / BUCKETS - share) > 1e-9:
        raise SystemExit(f"selectivity {share} is not a multiple of 1/{BUCKETS}")
    where = {"bucket": {"$lt": cut}}
    mask = index.matching(parse_filter(where))
    labels = np.flatnonzero(mask)
    truth = exact(vectors, queries, labels)
    ways: list[tuple[str, str, Search, int]] = [
        ("service", index.plan(len(labels), K), filtered_search(index, where), len(queries))
    ]
    forced = min(forced, len(queries))
    for plan in PLANS if index.kind == "hnsw" else ():
        ways.append(("forced", plan, filtered_search(index, where), forced))
    for k in OVERFETCH_K:
        ways.append((f"over-fetch k={k}", "", overfetched_search(index, k, cut), len(queries)))
    rows = []
    for method, plan, search, n in ways:
        index.tune(**(PLANS[plan] if method == "forced" else thresholds()))
        found, latency = measure(search, queries[:n])
        rows.append(
            {
                "vectors": index.count,
                "selectivity": share,
                "matches": len(labels),
                "method": method,
                "plan": plan,
                "queries": n,
                **latency,
                "recall_at_10": recall(found, truth[:n]),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    index.tune(**thresholds())
    return rows


def thresholds() -> dict:
    return {
        "brute_force_max_matches": OPTIONS.brute_force_max_matches,
        "oversample_min_share": OPTIONS.oversample_min_share,
    }


def numbers(text: str, kind: type) -> list:
    return [kind(part) for part in text.split(",") if part]


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    """The corpus's options, for every benchmark that searches it."""
    parser.add_argument("--model", type=Path, default=Path("models/fashion-mnist"))
    parser.add_argument("--originals", type=int, default=60_000, help="train images augmented")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "results" / "cache")


def load_corpus(args: argparse.Namespace) -> tuple[Encoder, np.ndarray, list[int], np.ndarray]:
    """The encoder, the queries, the sizes asked for, and the corpus of the largest of them."""
    faiss.omp_set_num_threads(2)
    encoder = load_encoder(args.model)
    queries = embed(encoder, load_split("test")[0][: args.queries])
    sizes = numbers(args.sizes, int)
    return (
        encoder,
        queries,
        sizes,
        corpus(encoder, max(sizes), args.originals, args.seed, args.cache),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_corpus_arguments(parser)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--ef-search", default="64,96,128,192,256,384", help="HNSW efSearch tried")
    parser.add_argument("--selectivities", default="0.5,0.05,0.005,0.0005")
    parser.add_argument("--forced-queries", type=int, default=200, help="queries per forced plan")
    parser.add_argument("--dim", type=int, help="leading dims kept (default: all)")
    parser.add_argument("--skip-unfiltered", action="store_true")
    parser.add_argument("--skip-filtered", action="store_true", help="both: only fill the cache")
    add_results_argument(parser)
    args = parser.parse_args()
    encoder, queries, sizes, biggest = load_corpus(args)
    unfiltered, filtered = [], []
    for size in sizes if not (args.skip_unfiltered and args.skip_filtered) else ():
        vectors = biggest[:size]
        if args.dim:
            vectors, q = truncate(vectors, args.dim), truncate(queries, args.dim)
        else:
            q = queries
        buckets = np.random.default_rng([args.seed, size]).permutation(size) * BUCKETS // size
        hnsw, hnsw_s = build("hnsw", vectors, buckets)
        if not args.skip_unfiltered:
            flat, flat_s = build("flat", vectors, buckets)
            built = {"flat": flat_s, "hnsw": hnsw_s}
            unfiltered += unfiltered_rows(flat, hnsw, q, numbers(args.ef_search, int), built)
            del flat
        if not args.skip_filtered:
            for share in numbers(args.selectivities, float):
                filtered += filtered_rows(hnsw, vectors, q, share, args.forced_queries)
    print("\n" + table(unfiltered, UNFILTERED_COLUMNS))
    print("\n" + table(filtered, FILTERED_COLUMNS))
    settings = {key: DEFAULTS[key] for key in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search")}
    write(
        args.results,
        "search",
        {
            "corpus": "Fashion-MNIST train + augmented copies, embedded",
            "model_version": encoder.info.version,
            "originals": args.originals,
            "seed": args.seed,
            "queries": len(queries),
            "settings": {**settings, **thresholds()},
            "unfiltered": unfiltered,
            "filtered": filtered,
        },
    )


UNFILTERED_COLUMNS = [
    ("vectors", "vectors"),
    ("dim", "dim"),
    ("kind", "kind"),
    ("ef_search", "efSearch"),
    ("build_s", "build s"),
    ("memory_mb", "MB"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("recall_at_10", "recall@10"),
]
FILTERED_COLUMNS = [
    ("vectors", "vectors"),
    ("selectivity", "share"),
    ("matches", "matches"),
    ("method", "method"),
    ("plan", "plan"),
    ("queries", "queries"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("recall_at_10", "recall@10"),
]

if __name__ == "__main__":
    main()
