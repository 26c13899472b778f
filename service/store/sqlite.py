"""The embedded store: SQLite in WAL mode in DATA_DIR, plus content-addressed original files.

Any number of processes on one machine may open the same data dir (`--workers N`): each thread
has its own connection, SQLite serialises writers (`BEGIN IMMEDIATE`), and WAL lets readers run
beside a writer. A write is acknowledged only after its transaction commits (synchronous=FULL).
An original is written (temp file, fsync, rename) before the row that points at it commits; it
is checked again inside the transaction, and deleted only inside one, so a concurrent delete of
the same content in another process can never leave a row without its file.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from service.durable import write_atomically
from service.store.base import (
    SCHEMA_VERSION,
    Change,
    ImageRecord,
    LogTruncated,
    NewImage,
    RowBatch,
    StorageFullError,
    StoreUnavailable,
    change_from,
    now_iso,
    row_batch,
    vector_bytes,
    vector_from,
)

DATABASE_FILE = "gallery.sqlite3"

# Version 0 is the layout before the change log had a head row; `_migrate` upgrades it in place.
TABLES = """
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
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

VERSION_1 = """
CREATE TABLE log_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    head INTEGER NOT NULL,   -- the newest seq handed out (writers serialise on this row)
    floor INTEGER NOT NULL   -- changes at or below this seq may have been pruned
);
CREATE TABLE log_consumers (name TEXT PRIMARY KEY, seq INTEGER NOT NULL, seen_at REAL NOT NULL);
"""

RECORD_COLUMNS = "id, metadata, sha256, size, format, created_at, updated_at, model_version, seq"


def _record(row: tuple) -> ImageRecord:
    return ImageRecord(row[0], json.loads(row[1]), *row[2:])


def run_script(db: sqlite3.Connection, script: str) -> None:
    """Statement by statement: `executescript` would commit the open transaction first."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


class SQLiteStore:
    backend = "sqlite"

    def __init__(self, data_dir: Path, *, busy_timeout_s: float = 10.0) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DATABASE_FILE
        self.originals = self.data_dir / "originals"
        self.originals.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()

    # --- connections ------------------------------------------------------------------------
    @property
    def _db(self) -> sqlite3.Connection:
        """This thread's connection: readers never wait behind another thread's commit."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    def close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its start."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except (OSError, sqlite3.OperationalError) as exc:
            if _is_disk_full(exc):
                raise StorageFullError("the data dir is full; nothing was stored") from exc
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise StoreUnavailable("the gallery database is busy; retry shortly") from exc
            raise

    def migrate(self) -> None:
        with self.chore("schema"), self._write() as db:
            run_script(db, TABLES)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {version}; this lookalike knows up to "
                    f"{SCHEMA_VERSION}: upgrade lookalike"
                )
            if version < 1:
                run_script(db, VERSION_1)
                used = db.execute(
                    "SELECT MAX(s) FROM (SELECT seq AS s FROM sqlite_sequence "
                    "WHERE name = 'changes' UNION ALL SELECT MAX(seq) FROM images)"
                ).fetchone()[0]
                oldest = db.execute("SELECT MIN(seq) FROM changes").fetchone()[0]
                head = used or 0
                floor = head if oldest is None else oldest - 1
                db.execute("INSERT INTO log_state VALUES (1, ?, ?)", (head, floor))
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    # --- the model and store-wide chores ------------------------------------------------------
    def model_version(self) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'model_version'").fetchone()
        return row[0] if row else None

    def set_model_version(self, version: str) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('model_version', ?)", (version,))

    @contextmanager
    def chore(self, name: str) -> Iterator[None]:
        with open(self.data_dir / f".{name}.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- originals ----------------------------------------------------------------------------
    def _original_path(self, sha256: str) -> Path:
        return self.originals / sha256[:2] / sha256

    def _write_original(self, sha256: str, content: bytes) -> None:
        path = self._original_path(sha256)
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            write_atomically(path, content)

    def read_original(self, sha256: str) -> bytes | None:
        try:
            return self._original_path(sha256).read_bytes()
        except FileNotFoundError:
            return None

    # --- writes -------------------------------------------------------------------------------
    @staticmethod
    def _take_seqs(db: sqlite3.Connection, count: int) -> int:
        """Reserve `count` seqs; returns the first."""
        head = db.execute(
            "UPDATE log_state SET head = head + ? WHERE id = 1 RETURNING head", (count,)
        ).fetchone()[0]
        return head - count + 1

    def upsert(self, images: list[NewImage], model_version: str) -> list[tuple[bool, Change]]:
        shas = [hashlib.sha256(image.content).hexdigest() for image in images]
        try:
            for image, sha in zip(images, shas, strict=True):
                self._write_original(sha, image.content)
        except OSError as exc:
            if _is_disk_full(exc):
                raise StorageFullError("the data dir is full; nothing was stored") from exc
            raise
        results, replaced = [], []
        with self._write() as db:
            seq = self._take_seqs(db, len(images))
            now = now_iso()
            for image, sha in zip(images, shas, strict=True):
                self._write_original(sha, image.content)  # a delete may have removed it meanwhile
                row = db.execute(
                    "SELECT seq, sha256 FROM images WHERE id = ?", (image.id,)
                ).fetchone()
                old_seq = row[0] if row else None
                if row and row[1] != sha:
                    replaced.append(row[1])
                db.execute(
                    "INSERT INTO changes (seq, old_seq, kind) VALUES (?, ?, 'upsert')",
                    (seq, old_seq),
                )
                metadata = json.dumps(image.metadata)
                values = (
                    metadata,
                    sha,
                    len(image.content),
                    image.format,
                    now,
                    model_version,
                    vector_bytes(image.vector),
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
                change = change_from(seq, old_seq, vector_bytes(image.vector), image.id, metadata)
                results.append((row is None, change))
                seq += 1
        self._drop_orphans(replaced)
        return results

    def delete(self, image_id: str) -> Change | None:
        with self._write() as db:
            row = db.execute("SELECT seq, sha256 FROM images WHERE id = ?", (image_id,)).fetchone()
            if row is None:
                return None
            seq = self._take_seqs(db, 1)
            db.execute(
                "INSERT INTO changes (seq, old_seq, kind) VALUES (?, ?, 'delete')", (seq, row[0])
            )
            db.execute("DELETE FROM images WHERE id = ?", (image_id,))
        self._drop_orphans([row[1]])
        return Change(seq, row[0], None)

    def _drop_orphans(self, shas: list[str]) -> None:
        """Delete originals no row points at, under the write lock, so that no upsert is adding
        a row for one meanwhile (an upsert checks its file inside its own transaction)."""
        if not shas:
            return
        with self._write() as db:
            for sha in set(shas):
                if not db.execute("SELECT 1 FROM images WHERE sha256 = ?", (sha,)).fetchone():
                    self._original_path(sha).unlink(missing_ok=True)

    def replace_vectors(
        self, updates: list[tuple[ImageRecord, np.ndarray]], model_version: str
    ) -> int:
        changed = 0
        with self._write() as db:
            seq = self._take_seqs(db, len(updates))
            for record, vector in updates:
                done = db.execute(
                    "UPDATE images SET vector = ?, model_version = ?, seq = ? "
                    "WHERE id = ? AND seq = ?",
                    (vector_bytes(vector), model_version, seq, record.id, record.seq),
                ).rowcount
                if done:
                    db.execute(
                        "INSERT INTO changes (seq, old_seq, kind) VALUES (?, ?, 'upsert')",
                        (seq, record.seq),
                    )
                    changed += 1
                seq += 1
        return changed

    # --- reads --------------------------------------------------------------------------------
    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def last_seq(self) -> int:
        return self._db.execute("SELECT head FROM log_state WHERE id = 1").fetchone()[0]

    def get(self, image_id: str) -> ImageRecord | None:
        row = self._db.execute(
            f"SELECT {RECORD_COLUMNS} FROM images WHERE id = ?", (image_id,)
        ).fetchone()
        return _record(row) if row else None

    def page(self, *, after_key: int, limit: int) -> tuple[list[ImageRecord], int | None]:
        rows = self._db.execute(
            f"SELECT {RECORD_COLUMNS}, key FROM images WHERE key > ? ORDER BY key LIMIT ?",
            (after_key, limit + 1),
        ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return [_record(r[:-1]) for r in rows], (rows[-1][-1] if more else None)

    def rows(self, *, max_seq: int, batch: int = 10_000) -> Iterator[RowBatch]:
        after = -1
        while True:
            rows = self._db.execute(
                "SELECT seq, vector, id, metadata FROM images WHERE seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?",
                (after, max_seq, batch),
            ).fetchall()
            if not rows:
                return
            after = rows[-1][0]
            yield row_batch(rows)

    def changes_since(self, seq: int) -> list[Change]:
        db = self._db
        db.execute("BEGIN")  # one read snapshot for the changes and the floor
        try:
            rows = db.execute(
                "SELECT c.seq, c.old_seq, i.vector, i.id, i.metadata FROM changes c "
                "LEFT JOIN images i ON i.seq = c.seq WHERE c.seq > ? ORDER BY c.seq",
                (seq,),
            ).fetchall()
            floor = db.execute("SELECT floor FROM log_state WHERE id = 1").fetchone()[0]
        finally:
            db.execute("COMMIT")
        if seq < floor:
            raise LogTruncated(f"changes after {seq} were pruned (the log starts after {floor})")
        return [change_from(*row) for row in rows]

    def stale(self, model_version: str, batch: int = 256) -> Iterator[list[ImageRecord]]:
        after = -1
        while True:
            rows = self._db.execute(
                f"SELECT {RECORD_COLUMNS}, key FROM images WHERE model_version != ? "
                "AND key > ? ORDER BY key LIMIT ?",
                (model_version, after, batch),
            ).fetchall()
            if not rows:
                return
            after = rows[-1][-1]
            yield [_record(r[:-1]) for r in rows]

    def count_stale(self, model_version: str) -> int:
        return self._db.execute(
            "SELECT COUNT(*) FROM images WHERE model_version != ?", (model_version,)
        ).fetchone()[0]

    def get_vector(self, image_id: str) -> np.ndarray | None:
        row = self._db.execute("SELECT vector FROM images WHERE id = ?", (image_id,)).fetchone()
        return vector_from(row[0]) if row else None

    # --- the log's consumers --------------------------------------------------------------------
    def ack(self, consumer: str, seq: int) -> None:
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO log_consumers VALUES (?, ?, ?)",
                (consumer, seq, time.time()),
            )

    def forget(self, consumer: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM log_consumers WHERE name = ?", (consumer,))

    def prune_log(self, retention_s: float) -> int:
        with self._write() as db:
            cutoff = time.time() - retention_s
            db.execute("DELETE FROM log_consumers WHERE seen_at < ?", (cutoff,))
            slowest = db.execute("SELECT MIN(seq) FROM log_consumers").fetchone()[0]
            head, floor = db.execute("SELECT head, floor FROM log_state WHERE id = 1").fetchone()
            new_floor = max(floor, head if slowest is None else slowest)
            if new_floor > floor:
                db.execute("DELETE FROM changes WHERE seq <= ?", (new_floor,))
                db.execute("UPDATE log_state SET floor = ? WHERE id = 1", (new_floor,))
            return new_floor

    # --- backups ------------------------------------------------------------------------------
    def backup(self, destination: Path) -> int:
        """A consistent copy of the gallery in `destination` (a new data dir); returns images.

        SQLite's online backup API copies the database while writers go on; the originals its
        rows point at are copied afterwards (they are immutable and written before their rows)."""
        destination.mkdir(parents=True, exist_ok=True)
        target = sqlite3.connect(destination / DATABASE_FILE)
        try:
            self._db.backup(target)
            shas = [row[0] for row in target.execute("SELECT DISTINCT sha256 FROM images")]
            count = target.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        finally:
            target.close()
        for sha in shas:
            content = self.read_original(sha)
            if content is not None:
                path = destination / "originals" / sha[:2] / sha
                path.parent.mkdir(parents=True, exist_ok=True)
                if not path.exists():
                    write_atomically(path, content)
        return count
