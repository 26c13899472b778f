"""The search index: FAISS over unit vectors (inner product = cosine score), derived from the
store's change log. Labels are the store's version numbers (`seq`), so a stale label never
resolves. Beside the vectors it keeps each label's id and metadata, so a search needs no
database round trip, and keeps answering while the database is away.

- `flat`: exact, IndexFlatIP in an IndexIDMap2; removal is real.
- `hnsw`: approximate, IndexHNSWFlat; HNSW cannot remove, so removed labels become tombstones,
  filtered at query time (search k + tombstones, drop them), and the owner rebuilds the index
  once tombstones pass a share of it.

Searches run concurrently (FAISS releases the GIL); writes take the lock exclusively.
Snapshots carry the last seq they cover and a checksum; a snapshot that fails to load is
reported, and the owner rebuilds from the store.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import orjson

from service.store.base import Change, IndexedRow, RowBatch

MAGIC = b"LOOKALIKE-INDEX-2\n"


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict


class SnapshotError(ValueError):
    """The snapshot file is missing, truncated, corrupt or for another model."""


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


class VectorIndex:
    def __init__(
        self,
        dim: int,
        kind: str,
        *,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 96,
    ) -> None:
        if kind not in ("flat", "hnsw"):
            raise ValueError(f"index kind must be 'flat' or 'hnsw', not {kind!r}")
        self.dim, self.kind = dim, kind
        self._hnsw = (hnsw_m, ef_construction, ef_search)
        self._index = self._empty()
        self._tombstones: set[int] = set()
        self._rows: dict[int, tuple[str, str]] = {}  # label → (id, metadata JSON)
        self._labels: dict[str, int] = {}  # id → its live label
        self.lock = ReadWriteLock()
        self.seq = 0  # the last store change this index includes

    def _empty(self) -> faiss.Index:
        if self.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        m, ef_construction, ef_search = self._hnsw
        hnsw = faiss.IndexHNSWFlat(self.dim, m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = ef_construction
        hnsw.hnsw.efSearch = ef_search
        return faiss.IndexIDMap2(hnsw)

    @property
    def count(self) -> int:
        """Live vectors (tombstones excluded)."""
        return len(self._rows)

    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    @property
    def tombstone_share(self) -> float:
        return len(self._tombstones) / max(1, self._index.ntotal)

    # --- writes (callers hold lock.write()) ------------------------------------------------
    def add(self, batch: RowBatch) -> None:
        if not len(batch.seqs):
            return
        self._index.add_with_ids(
            np.ascontiguousarray(batch.vectors, dtype=np.float32), batch.seqs.astype(np.int64)
        )
        for label, image_id, metadata in zip(
            batch.seqs.tolist(), batch.ids, batch.metadata, strict=True
        ):
            self._rows[label] = (image_id, metadata)
            self._labels[image_id] = label

    def _remove(self, label: int) -> None:
        row = self._rows.pop(label, None)
        if row is None:
            return  # never added: its row had changed again before this index saw it
        if self._labels.get(row[0]) == label:
            del self._labels[row[0]]
        if self.kind == "flat":
            self._index.remove_ids(np.array([label], dtype=np.int64))  # type: ignore[arg-type]
        else:
            self._tombstones.add(label)

    def apply(self, change: Change) -> None:
        """One store change: an upsert is remove-then-add (FAISS does not detect duplicates)."""
        if change.old_seq is not None:
            self._remove(change.old_seq)
        if change.row is not None:
            self.add(_one_row(change.seq, change.row))
        self.seq = max(self.seq, change.seq)

    # --- reads (callers hold lock.read()) --------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Per query, up to k hits, best first, tombstones dropped."""
        if not self._index.ntotal:
            return [[] for _ in queries]
        want = min(k + len(self._tombstones), self._index.ntotal)
        scores, labels = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), want)
        results = []
        for s_row, l_row in zip(scores, labels, strict=True):
            hits = []
            for score, label in zip(s_row.tolist(), l_row.tolist(), strict=True):
                row = self._rows.get(label)
                if row is not None:
                    hits.append(Hit(row[0], score, orjson.loads(row[1])))
                    if len(hits) == k:
                        break
            results.append(hits)
        return results

    def vector_of(self, image_id: str) -> np.ndarray | None:
        label = self._labels.get(image_id)
        if label is None:
            return None
        return np.asarray(self._index.reconstruct(label), dtype=np.float32)

    # --- snapshots -------------------------------------------------------------------------
    def snapshot_bytes(self, *, model_version: str) -> bytes:
        """The snapshot file's content (callers hold a lock so it is consistent)."""
        vectors = faiss.serialize_index(self._index).tobytes()
        rows = orjson.dumps([[label, *row] for label, row in self._rows.items()])
        header = orjson.dumps(
            {
                "seq": self.seq,
                "kind": self.kind,
                "dim": self.dim,
                "model_version": model_version,
                "count": self.count,
                "tombstones": sorted(self._tombstones),
                "vector_bytes": len(vectors),
            }
        )
        body = MAGIC + struct.pack("<Q", len(header)) + header + vectors + rows
        return body + hashlib.sha256(body).digest()

    @staticmethod
    def peek_seq(path: Path) -> int | None:
        """The seq a snapshot file covers, from its header alone; None if there is none."""
        try:
            with open(path, "rb") as f:
                start = f.read(len(MAGIC) + 8)
                if len(start) < len(MAGIC) + 8 or not start.startswith(MAGIC):
                    return None
                (length,) = struct.unpack("<Q", start[len(MAGIC) :])
                return int(orjson.loads(f.read(length))["seq"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @classmethod
    def load(cls, path: Path, *, model_version: str, **options: int) -> VectorIndex:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SnapshotError(f"no readable snapshot at {path}") from exc
        body, digest = data[:-32], data[-32:]
        if not data.startswith(MAGIC) or hashlib.sha256(body).digest() != digest:
            raise SnapshotError(f"snapshot {path} is truncated, corrupt or of an older format")
        (length,) = struct.unpack("<Q", body[len(MAGIC) : len(MAGIC) + 8])
        start = len(MAGIC) + 8
        try:
            header = orjson.loads(body[start : start + length])
        except orjson.JSONDecodeError as exc:
            raise SnapshotError(f"snapshot {path} has a corrupt header") from exc
        if header["model_version"] != model_version:
            raise SnapshotError(f"snapshot {path} holds vectors of another model")
        index = cls(header["dim"], header["kind"], **options)
        vectors_end = start + length + header["vector_bytes"]
        raw = np.frombuffer(body[start + length : vectors_end], dtype=np.uint8)
        index._index = faiss.deserialize_index(raw)
        if header["kind"] == "hnsw":
            faiss.downcast_index(index._index.index).hnsw.efSearch = index._hnsw[2]  # type: ignore[attr-defined]
        for label, image_id, metadata in orjson.loads(body[vectors_end:]):
            index._rows[label] = (image_id, metadata)
            index._labels[image_id] = label
        index._tombstones = set(header["tombstones"])
        index.seq = header["seq"]
        return index


def _one_row(seq: int, row: IndexedRow) -> RowBatch:
    return RowBatch(
        seqs=np.array([seq], dtype=np.int64),
        vectors=row.vector[None, :],
        ids=[row.id],
        metadata=[row.metadata],
    )
