"""The search index: FAISS over unit vectors (inner product = cosine score), derived from the
store. Labels are the store's version numbers (`seq`), so a stale label never resolves.

- `flat`: exact, IndexFlatIP in an IndexIDMap2; removal is real.
- `hnsw`: approximate, IndexHNSWFlat; HNSW cannot remove, so removed labels become tombstones,
  filtered at query time (search k + tombstones, drop them), and the owner rebuilds the index
  once tombstones pass a share of it.

Searches run concurrently (FAISS releases the GIL); writes take the lock exclusively.
Snapshots are written atomically (temp file, fsync, rename) with the last seq they cover and a
checksum; a snapshot that fails to load is reported, and the owner rebuilds from the store.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

MAGIC = b"LOOKALIKE-INDEX-1\n"


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
        return self._index.ntotal - len(self._tombstones)

    @property
    def tombstone_share(self) -> float:
        return len(self._tombstones) / max(1, self._index.ntotal)

    # --- writes (callers hold lock.write()) ------------------------------------------------
    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        if len(labels):
            self._index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), labels.astype(np.int64)
            )

    def remove(self, labels: list[int]) -> None:
        if not labels:
            return
        if self.kind == "flat":
            self._index.remove_ids(np.array(labels, dtype=np.int64))  # type: ignore[arg-type]
        else:
            self._tombstones.update(labels)

    def apply(self, seq: int, old_seq: int | None, vector: np.ndarray | None) -> None:
        """One store change: an upsert is remove-then-add (FAISS does not detect duplicates)."""
        if old_seq is not None:
            self.remove([old_seq])
        if vector is not None:
            self.add(np.array([seq]), vector[None, :])
        self.seq = max(self.seq, seq)

    # --- reads (callers hold lock.read()) --------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """Per query, up to k (label, score) pairs, best first, tombstones dropped."""
        if not self._index.ntotal:
            return [[] for _ in queries]
        want = min(k + len(self._tombstones), self._index.ntotal)
        scores, labels = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), want)
        return [
            [
                (int(lb), float(sc))
                for sc, lb in zip(s_row, l_row, strict=True)
                if lb >= 0 and int(lb) not in self._tombstones
            ][:k]
            for s_row, l_row in zip(scores, labels, strict=True)
        ]

    # --- snapshots -------------------------------------------------------------------------
    def snapshot_bytes(self, *, model_version: str) -> bytes:
        """The snapshot file's content (callers hold a lock so it is consistent)."""
        header = json.dumps(
            {
                "seq": self.seq,
                "kind": self.kind,
                "dim": self.dim,
                "model_version": model_version,
                "count": self.count,
                "tombstones": sorted(self._tombstones),
            }
        ).encode()
        body = MAGIC + struct.pack("<Q", len(header)) + header
        body += faiss.serialize_index(self._index).tobytes()
        return body + hashlib.sha256(body).digest()

    @classmethod
    def load(cls, path: Path, *, model_version: str, **options: int) -> VectorIndex:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SnapshotError(f"no readable snapshot at {path}") from exc
        body, digest = data[:-32], data[-32:]
        if not data.startswith(MAGIC) or hashlib.sha256(body).digest() != digest:
            raise SnapshotError(f"snapshot {path} is truncated or corrupt")
        (length,) = struct.unpack("<Q", body[len(MAGIC) : len(MAGIC) + 8])
        start = len(MAGIC) + 8
        try:
            header = json.loads(body[start : start + length])
        except ValueError as exc:
            raise SnapshotError(f"snapshot {path} has a corrupt header") from exc
        if header["model_version"] != model_version:
            raise SnapshotError(f"snapshot {path} holds vectors of another model")
        index = cls(header["dim"], header["kind"], **options)
        raw = np.frombuffer(body[start + length :], dtype=np.uint8)
        index._index = faiss.deserialize_index(raw)
        if header["kind"] == "hnsw":
            faiss.downcast_index(index._index.index).hnsw.efSearch = index._hnsw[2]  # type: ignore[attr-defined]
        index._tombstones = set(header["tombstones"])
        index.seq = header["seq"]
        return index
