"""The gallery's source of truth: SQLite in WAL mode, plus content-addressed originals.

Per image: id, metadata JSON, sha256, size, format, timestamps, model version and vector.
Every change gets a new sequence number `seq` in the `changes` log; a row's `seq` is the
version of its vector, and it is also the vector's label in the search index, so a stale label
(an old version, a deleted image) never resolves to a row. The index snapshot records the last
seq it covers, and `changes_since` replays the rest.

A write is acknowledged only after its transaction commits (synchronous=FULL). An original is
written (temp file, fsync, rename) before the row that points at it is committed.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.durable import write_atomically

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    metadata TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    format TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    model_version TEXT NOT NULL,
    vector BLOB NOT NULL,
    seq INTEGER NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS images_sha256 ON images (sha256);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    old_seq INTEGER,
    kind TEXT NOT NULL CHECK (kind IN ('upsert', 'delete'))
);
"""


class StorageFullError(OSError):
    """The data dir has no space left; nothing was written."""


@dataclass(frozen=True)
class NewImage:
    id: str
    content: bytes
    format: str
    metadata: dict
    vector: np.ndarray


@dataclass(frozen=True)
class ImageRecord:
    id: str
    metadata: dict
    sha256: str
    size: int
    format: str
    created_at: str
    updated_at: str
    model_version: str
    seq: int

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "metadata": self.metadata,
            "sha256": self.sha256,
            "size": self.size,
            "format": self.format,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "model": self.model_version,
        }


@dataclass(frozen=True)
class Change:
    """Replay step for the index: drop `old_seq`, then add `seq` with `vector` when given."""

    seq: int
    old_seq: int | None
    vector: np.ndarray | None


_RECORD_COLUMNS = "id, metadata, sha256, size, format, created_at, updated_at, model_version, seq"

CONTENT_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _record(row: tuple) -> ImageRecord:
    return ImageRecord(row[0], json.loads(row[1]), *row[2:])


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


class Store:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.originals = self.data_dir / "originals"
        self.originals.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.data_dir / "gallery.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._lock = threading.RLock()  # one connection; SQLite serialises writes anyway
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- originals -----------------------------------------------------------------------
    def original_path(self, sha256: str) -> Path:
        return self.originals / sha256[:2] / sha256

    def _write_original(self, content: bytes) -> str:
        sha = hashlib.sha256(content).hexdigest()
        path = self.original_path(sha)
        if path.exists():
            return sha
        path.parent.mkdir(exist_ok=True)
        write_atomically(path, content)
        return sha

    def read_original(self, record: ImageRecord) -> bytes:
        return self.original_path(record.sha256).read_bytes()

    # --- writes ----------------------------------------------------------------------------
    def upsert(self, images: list[NewImage], model_version: str) -> list[tuple[bool, Change]]:
        """Store all images in one transaction; per image: (created, the change to index)."""
        try:
            shas = [self._write_original(image.content) for image in images]
            with self._lock:
                return self._upsert_rows(images, shas, model_version)
        except (OSError, sqlite3.OperationalError) as exc:
            if _is_disk_full(exc):
                raise StorageFullError(errno.ENOSPC, "the data dir is full") from exc
            raise

    def _upsert_rows(
        self, images: list[NewImage], shas: list[str], model_version: str
    ) -> list[tuple[bool, Change]]:
        db, now, results = self._db, _now(), []
        db.execute("BEGIN IMMEDIATE")
        try:
            for image, sha in zip(images, shas, strict=True):
                row = db.execute("SELECT seq FROM images WHERE id = ?", (image.id,)).fetchone()
                old_seq = row[0] if row else None
                seq = db.execute(
                    "INSERT INTO changes (old_seq, kind) VALUES (?, 'upsert')", (old_seq,)
                ).lastrowid
                values = (
                    json.dumps(image.metadata),
                    sha,
                    len(image.content),
                    image.format,
                    now,
                    model_version,
                    np.ascontiguousarray(image.vector, dtype=np.float32).tobytes(),
                    seq,
                )
                if row:
                    db.execute(
                        "UPDATE images SET metadata=?, sha256=?, size=?, format=?, updated_at=?, "
                        "model_version=?, vector=?, seq=? WHERE id=?",
                        (*values, image.id),
                    )
                else:
                    db.execute(
                        "INSERT INTO images (metadata, sha256, size, format, updated_at, "
                        "model_version, vector, seq, id, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (*values, image.id, now),
                    )
                assert seq is not None
                results.append((row is None, Change(seq, old_seq, image.vector)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return results

    def delete(self, image_id: str) -> Change | None:
        """Remove the image everywhere; None when the id is unknown."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT seq, sha256 FROM images WHERE id = ?", (image_id,)
                ).fetchone()
                if row is None:
                    db.execute("ROLLBACK")
                    return None
                seq = db.execute(
                    "INSERT INTO changes (old_seq, kind) VALUES (?, 'delete')", (row[0],)
                ).lastrowid
                db.execute("DELETE FROM images WHERE id = ?", (image_id,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            shared = db.execute("SELECT 1 FROM images WHERE sha256 = ?", (row[1],)).fetchone()
        if not shared:
            self.original_path(row[1]).unlink(missing_ok=True)
        assert seq is not None
        return Change(seq, row[0], None)

    def set_vectors(self, updates: list[tuple[str, np.ndarray]], model_version: str) -> None:
        """Re-embedding: replace vectors in place (the index is rebuilt afterwards)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "UPDATE images SET vector = ?, model_version = ? WHERE id = ?",
                    [(v.astype(np.float32).tobytes(), model_version, i) for i, v in updates],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def prune_changes(self, through_seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM changes WHERE seq <= ?", (through_seq,))

    # --- reads -----------------------------------------------------------------------------
    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def last_seq(self) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'changes'"
            ).fetchone()
        return row[0] if row else 0

    def get(self, image_id: str) -> ImageRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_RECORD_COLUMNS} FROM images WHERE id = ?", (image_id,)
            ).fetchone()
        return _record(row) if row else None

    def get_vector(self, image_id: str) -> np.ndarray | None:
        with self._lock:
            row = self._db.execute("SELECT vector FROM images WHERE id = ?", (image_id,)).fetchone()
        return np.frombuffer(row[0], dtype=np.float32) if row else None

    def by_seq(self, seqs: list[int]) -> dict[int, ImageRecord]:
        if not seqs:
            return {}
        marks = ",".join("?" * len(seqs))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_RECORD_COLUMNS} FROM images WHERE seq IN ({marks})", seqs
            ).fetchall()
        return {row[-1]: _record(row) for row in rows}

    def page(self, *, after_key: int, limit: int) -> tuple[list[ImageRecord], int | None]:
        """Records in insertion order after a cursor; the next cursor, or None at the end."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_RECORD_COLUMNS}, key FROM images WHERE key > ? ORDER BY key LIMIT ?",
                (after_key, limit + 1),
            ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return [_record(r[:-1]) for r in rows], (rows[-1][-1] if more else None)

    def vectors(
        self, *, max_seq: int, batch: int = 10_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(seqs (n,), vectors (n, D)) of rows at versions ≤ max_seq, in chunks (rebuilds)."""
        after = -1
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT seq, vector FROM images WHERE seq > ? AND seq <= ? ORDER BY seq "
                    "LIMIT ?",
                    (after, max_seq, batch),
                ).fetchall()
            if not rows:
                return
            after = rows[-1][0]
            seqs = np.array([r[0] for r in rows], dtype=np.int64)
            yield seqs, np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])

    def changes_since(self, seq: int) -> list[Change]:
        with self._lock:
            rows = self._db.execute(
                "SELECT c.seq, c.old_seq, i.vector FROM changes c "
                "LEFT JOIN images i ON i.seq = c.seq WHERE c.seq > ? ORDER BY c.seq",
                (seq,),
            ).fetchall()
        return [
            Change(s, old, np.frombuffer(v, dtype=np.float32) if v is not None else None)
            for s, old, v in rows
        ]

    def stale(self, model_version: str, batch: int = 256) -> Iterator[list[ImageRecord]]:
        """Records whose vectors another model made, in chunks (for re-embedding)."""
        after = -1
        while True:
            with self._lock:
                rows = self._db.execute(
                    f"SELECT {_RECORD_COLUMNS}, key FROM images WHERE model_version != ? "
                    "AND key > ? ORDER BY key LIMIT ?",
                    (model_version, after, batch),
                ).fetchall()
            if not rows:
                return
            after = rows[-1][-1]
            yield [_record(r[:-1]) for r in rows]

    def count_stale(self, model_version: str) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM images WHERE model_version != ?", (model_version,)
            ).fetchone()[0]
