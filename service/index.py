"""Search over one collection's vectors: FAISS over unit vectors (inner product = cosine score).
`SearchableIndex` holds how a search runs, filtered or not; two classes of index share it:
- `VectorIndex` (here): in memory and writable, derived from the store's change log. Its FAISS
  ids are labels, the store's version numbers (`seq`), so a stale label never resolves. Beside the
  vectors it keeps each label's id and metadata, and a `MetadataIndex` of that metadata, so a
  search needs no database round trip, and keeps answering while the database is away. A
  process's delta since its generation is one (collection_index.py).
- `MappedIndex` (mapped_index.py): one collection's part of a generation, read-only and mapped
  from files that every worker shares; its FAISS ids are positions.

- `flat`: exact, IndexFlatIP in an IndexIDMap2; removal is real.
- `hnsw`: approximate, IndexHNSWFlat; HNSW cannot remove, so removed labels become tombstones,
  filtered at query time (search k + tombstones, drop them), and the owner rebuilds the index
  once tombstones pass a share of it.
- `ivf`: compressed, for big galleries, and only as a generation's part: IVF over 8-bit scalar
  codes (IndexIVFScalarQuantizer, 256 bytes a 256-d vector instead of 1 kB), `ivf_lists(n)`
  lists, `ivf_nprobe` of them scanned per query. Its scores are the codes' (about 1e-3 off);
  the exact vectors stay in a file beside it, read only for what is scored directly.

A filtered search returns the true top k among the matching images (all of them when fewer
match). The filter becomes a mask over labels; how the search runs depends on how many match
(search_plan.py chooses, by what each way costs at this index's size):
- `brute force`: score the matching vectors directly (exact, any kind);
- `selector`: a FAISS search with an ID selector: exact on `flat`; on `hnsw` its efSearch
  raised so that k matches are found among the nodes it visits; on `ivf` more lists scanned;
- `oversample` (`hnsw`, when at least `oversample_min_share` of the images match): an
  unfiltered search for enough more than k that k matches survive, then the mask; if fewer
  than k survive, the selector search.

Searches run concurrently (FAISS releases the GIL); writes take the lock exclusively.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import faiss
import numpy as np
import orjson

from service import search_plan, strict_json
from service.filters import Filter
from service.index_options import IndexKind, IndexOptions
from service.metadata_index import MetadataIndex
from service.search_plan import SearchPlan
from service.store.base import Change, IndexedRow, RowBatch

log = logging.getLogger(__name__)

IVF_TRAINING_PER_LIST = 64  # vectors k-means sees per list (a seeded sample)
IVF_TRAINING_ITERATIONS = 10
DEFAULT_OPTIONS = IndexOptions()  # the service's defaults


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict


class ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def log_left_out(image_id: str, exc: Exception) -> None:
    """One row whose stored metadata the strict parser refuses: left out of search, not fatal."""
    log.error(
        "image %r is left out of search: %s (re-upload it with valid metadata)", image_id, exc
    )


def new_faiss_index(dim: int, kind: IndexKind, options: IndexOptions) -> faiss.Index:
    """An empty FAISS index of `kind` (flat or hnsw) over unit vectors; its ids are positions.
    An `ivf` index is trained on its vectors: `ivf_over`."""
    if kind == "ivf":
        raise ValueError("an ivf index is built from its vectors (ivf_over)")
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    hnsw = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = options.ef_construction
    hnsw.hnsw.efSearch = options.ef_search
    return hnsw


def ivf_lists(count: int) -> int:
    """Inverted lists for `count` vectors: the power of two nearest 4·√count (FAISS's guidance
    is 4–16·√n), at least 16, at most one per 39 vectors (k-means needs that many a centroid)."""
    nearest = 2 ** round(math.log2(4 * math.sqrt(max(count, 1))))
    return max(1, min(nearest, 65_536, max(16, count // 39)))


def ivf_over(
    vectors: np.ndarray, trained: faiss.Index | None = None, chunk: int = 65_536
) -> faiss.Index:
    """An `ivf` index over `vectors` (unit, float32, ids = positions), every vector added in
    chunks (so a mapped array is read once). Its lists come from k-means on a seeded sample, or,
    when `trained` (the part before, an `ivf` index) has as many lists as this size calls for,
    from there: its centroids and code ranges, and no k-means (half of a build at 2M)."""
    count, dim = vectors.shape
    lists = ivf_lists(count)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, dim, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    before = faiss.downcast_index(trained) if trained is not None else None
    if isinstance(before, faiss.IndexIVFScalarQuantizer) and before.nlist == lists:
        quantizer.add(before.quantizer.reconstruct_n(0, lists))
        index.sq = before.sq
        index.is_trained = True
    else:
        index.cp.niter = IVF_TRAINING_ITERATIONS
        index.cp.max_points_per_centroid = IVF_TRAINING_PER_LIST
        sample_size = min(count, lists * IVF_TRAINING_PER_LIST)
        sample = np.sort(np.random.default_rng(0).choice(count, sample_size, replace=False))
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    for start in range(0, count, chunk):
        index.add(np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32))
    return index


class SearchableIndex:
    """How a search runs over FAISS ids (module docstring); subclasses say what an id holds."""

    kind: IndexKind
    options: IndexOptions
    _index: faiss.Index

    @property
    def count(self) -> int:
        """Live images."""
        raise NotImplementedError

    @property
    def _dead(self) -> int:
        """Ids FAISS still holds whose image is gone (they are skipped)."""
        raise NotImplementedError

    def _row(self, fid: int) -> tuple[str, str] | None:
        """The live image at FAISS id `fid`: its id and metadata JSON; None when gone."""
        raise NotImplementedError

    def _vectors(self, fids: np.ndarray) -> np.ndarray:
        """The exact vectors at these FAISS ids, (m, D) float32."""
        return self._index.reconstruct_batch(fids)

    def matching(self, where: Filter) -> np.ndarray:
        """(n,) bool over FAISS ids: True where a live image's metadata matches `where`."""
        raise NotImplementedError

    @property
    def index_bytes(self) -> int:
        """The FAISS index, serialised (about what a generation's index.faiss holds)."""
        return int(faiss.serialize_index(self._index).nbytes)

    def tune(self, **changes: Any) -> None:
        """Change search-time options (IndexOptions fields) of a built index, without rebuilding
        it (bench/ measures several on one build). Callers hold lock.write()."""
        self.options = replace(self.options, **changes)
        self._set_search_depth()

    def _set_search_depth(self) -> None:
        """efSearch of an HNSW index, nprobe of an IVF one, from the options."""
        inner = self._index.index if isinstance(self._index, faiss.IndexIDMap2) else self._index
        if self.kind == "hnsw":
            faiss.downcast_index(inner).hnsw.efSearch = self.options.ef_search  # type: ignore[attr-defined]
        elif self.kind == "ivf":
            faiss.downcast_index(inner).nprobe = self.options.ivf_nprobe  # type: ignore[attr-defined]

    # --- reads (callers hold lock.read()) --------------------------------------------------
    def search(self, queries: np.ndarray, k: int, where: Filter | None = None) -> list[list[Hit]]:
        """Per query, up to k hits, best first, tombstones dropped; with `where`, the top k
        among the images whose metadata matches it (see the module docstring)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if not self.count:
            return [[] for _ in queries]
        if where is None:
            return self._unfiltered(queries, k)
        mask = self.matching(where)
        matches = int(np.count_nonzero(mask))
        plan = self.plan(matches, k)
        if plan == "none":
            return [[] for _ in queries]
        if plan == "brute force":
            return self._brute_force(queries, k, mask)
        if plan == "oversample":
            found = self._oversampled(queries, k, mask, matches)
            if all(len(hits) >= min(k, matches) for hits in found):
                return found
        return self._selected(queries, k, mask, matches)

    def _unfiltered(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        want = min(k + self._dead, self._index.ntotal)
        return self._hits(*self._index.search(queries, want), k)

    def plan(self, matches: int, k: int) -> SearchPlan:
        """How a filtered search for k among this many matching images runs."""
        return search_plan.choose(self.kind, self.count, matches, k, self.options, self._lists)

    @property
    def _lists(self) -> int:
        """An IVF index's inverted lists; 0 for other kinds."""
        if self.kind != "ivf":
            return 0
        return int(faiss.downcast_index(self._index).nlist)  # type: ignore[attr-defined]

    def _brute_force(self, queries: np.ndarray, k: int, mask: np.ndarray) -> list[list[Hit]]:
        labels = np.flatnonzero(mask)
        vectors = self._vectors(labels)  # (m, D)
        scores = queries @ vectors.T  # (nq, m)
        top = min(k, len(labels))
        best = np.argpartition(-scores, top - 1, axis=1)[:, :top]
        best_scores = np.take_along_axis(scores, best, axis=1)
        order = np.argsort(-best_scores, axis=1, kind="stable")
        best = np.take_along_axis(best, order, axis=1)
        return self._hits(np.take_along_axis(scores, best, axis=1), labels[best], k)

    def _oversampled(
        self, queries: np.ndarray, k: int, mask: np.ndarray, matches: int
    ) -> list[list[Hit]]:
        share = matches / self.count
        want = math.ceil(k / share * search_plan.OVERSAMPLE) + self._dead
        scores, labels = self._index.search(queries, min(want, self._index.ntotal))
        return self._hits(scores, labels, k, mask)

    def _selected(
        self, queries: np.ndarray, k: int, mask: np.ndarray, matches: int
    ) -> list[list[Hit]]:
        bitmap = np.packbits(mask, bitorder="little")  # kept alive: the selector points into it
        selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        if self.kind == "flat":
            params = faiss.SearchParameters()
        elif self.kind == "ivf":
            params = faiss.SearchParametersIVF()  # type: ignore[attr-defined]
            params.nprobe = search_plan.selector_nprobe(
                self.count, matches, self.options, self._lists
            )
        else:
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = search_plan.selector_ef(self.count, matches, k, self.options)
        params.sel = selector
        scores, labels = self._index.search(queries, min(k, matches), params=params)
        return self._hits(scores, labels, k)

    def _hits(
        self, scores: np.ndarray, labels: np.ndarray, k: int, mask: np.ndarray | None = None
    ) -> list[list[Hit]]:
        """FAISS's (scores, labels) rows → up to k live hits each, best first (and, with a
        mask, only its labels)."""
        results = []
        for s_row, l_row in zip(scores, labels, strict=True):
            hits = []
            for score, label in zip(s_row.tolist(), l_row.tolist(), strict=True):
                if mask is not None and not (0 <= label < len(mask) and mask[label]):
                    continue
                row = self._row(label)
                if row is not None:
                    hits.append(Hit(row[0], score, orjson.loads(row[1])))
                    if len(hits) == k:
                        break
            results.append(hits)
        return results


class VectorIndex(SearchableIndex):
    """In memory and writable: FAISS ids are labels (seqs)."""

    def __init__(self, dim: int, kind: IndexKind, options: IndexOptions = DEFAULT_OPTIONS) -> None:
        if kind not in ("flat", "hnsw"):
            raise ValueError(f"an index in memory is 'flat' or 'hnsw', not {kind!r}")
        self.dim, self.kind, self.options = dim, kind, options
        self._index = self._empty()
        self._tombstones: set[int] = set()
        self._rows: dict[int, tuple[str, str]] = {}  # label → (id, metadata JSON)
        self._labels: dict[str, int] = {}  # id → its live label
        self._metadata = MetadataIndex()
        self._unreadable: dict[int, str] = {}  # label → id: rows left out, metadata unreadable
        self.lock = ReadWriteLock()
        self.seq = 0  # the last store change this index includes

    def _empty(self) -> faiss.Index:
        return faiss.IndexIDMap2(new_faiss_index(self.dim, self.kind, self.options))

    @property
    def count(self) -> int:
        """Live vectors (tombstones excluded)."""
        return len(self._rows)

    @property
    def _dead(self) -> int:
        return len(self._tombstones)

    def _row(self, fid: int) -> tuple[str, str] | None:
        return self._rows.get(fid)

    def matching(self, where: Filter) -> np.ndarray:
        return self._metadata.mask(where)

    @property
    def unreadable(self) -> int:
        """Current rows left out of this index because their stored metadata is unreadable."""
        return len(self._unreadable)

    # --- writes (callers hold lock.write()) ------------------------------------------------
    def add(self, batch: RowBatch) -> None:
        """Index a batch of rows. A row whose stored metadata the strict parser refuses (one
        written before uploads were parsed strictly) is left out, logged and counted: one bad
        row must never stop the index."""
        keep, parsed = [], []
        for i, (label, image_id, text) in enumerate(
            zip(batch.seqs.tolist(), batch.ids, batch.metadata, strict=True)
        ):
            try:
                parsed.append(strict_json.loads(text, "metadata"))
                keep.append(i)
            except strict_json.InvalidJSON as exc:
                self._unreadable[label] = image_id
                log_left_out(image_id, exc)
        if not keep:
            return
        seqs = batch.seqs[keep].astype(np.int64)
        vectors = np.ascontiguousarray(batch.vectors[keep], dtype=np.float32)
        self._index.add_with_ids(vectors, seqs)
        for i, label, metadata in zip(keep, seqs.tolist(), parsed, strict=True):
            image_id = batch.ids[i]
            self._rows[label] = (image_id, batch.metadata[i])
            self._labels[image_id] = label
            self._metadata.add(label, metadata)

    def _remove(self, label: int) -> None:
        self._unreadable.pop(label, None)
        row = self._rows.pop(label, None)
        if row is None:
            return  # never added: its row had changed again before this index saw it
        if self._labels.get(row[0]) == label:
            del self._labels[row[0]]
        self._metadata.remove(label, orjson.loads(row[1]))
        if self.kind == "flat":
            self._index.remove_ids(np.array([label], dtype=np.int64))  # type: ignore[arg-type]
        else:
            self._tombstones.add(label)

    def apply(self, change: Change) -> None:
        """One store change: an upsert is remove-then-add (FAISS does not detect duplicates).
        A change this index already includes is skipped, so replaying is idempotent."""
        if change.seq <= self.seq:
            return
        if change.old_seq is not None:
            self._remove(change.old_seq)
        if change.row is not None:
            self.add(_one_row(change.seq, change.row))
        self.seq = max(self.seq, change.seq)

    def live_rows(self) -> RowBatch:
        """Its live rows, in label order (callers hold lock.read())."""
        labels = np.array(sorted(self._rows), dtype=np.int64)
        vectors = (
            self._index.reconstruct_batch(labels)
            if len(labels)
            else np.zeros((0, self.dim), dtype=np.float32)
        )
        rows = [self._rows[label] for label in labels.tolist()]
        return RowBatch(labels, vectors, [r[0] for r in rows], [r[1] for r in rows])

    @property
    def unreadable_rows(self) -> dict[int, str]:
        """Rows left out because their metadata is unreadable: label → id."""
        return dict(self._unreadable)

    def vector_of(self, image_id: str) -> np.ndarray | None:
        label = self._labels.get(image_id)
        if label is None:
            return None
        return np.asarray(self._index.reconstruct(label), dtype=np.float32)


def _one_row(seq: int, row: IndexedRow) -> RowBatch:
    return RowBatch(
        seqs=np.array([seq], dtype=np.int64),
        vectors=row.vector[None, :],
        ids=[row.id],
        metadata=[row.metadata],
    )
