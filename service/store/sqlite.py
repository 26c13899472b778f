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
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from service.durable import write_atomically
from service.file_lock import locked
from service.store.base import (
    ImageRecord,
    NewImage,
    StorageFullError,
    StoreUnavailable,
    stored_metadata,
)
from service.store.sql import Executor, SQLStore, run_script

DATABASE_FILE = "gallery.sqlite3"

# Version 0 is the layout before the change log had a head row; `migrate` upgrades it in place:
# version 1 adds the head row, version 2 collections (every image before it is in `default`),
# version 3 API keys, version 4 kept models.
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

# SQLite cannot change a table's UNIQUE or CHECK constraints: images and changes are copied.
VERSION_2 = """
CREATE TABLE collections (name TEXT PRIMARY KEY, created_at TEXT NOT NULL);
INSERT INTO collections VALUES ('default', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
CREATE TABLE images_2 (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    metadata TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    format TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    model_version TEXT NOT NULL,
    vector BLOB NOT NULL,
    seq INTEGER NOT NULL UNIQUE,
    UNIQUE (collection, id)
);
INSERT INTO images_2 SELECT key, 'default', id, metadata, sha256, size, format, created_at,
    updated_at, model_version, vector, seq FROM images;
DROP TABLE images;
ALTER TABLE images_2 RENAME TO images;
CREATE INDEX images_sha256 ON images (sha256);
CREATE INDEX images_collection_key ON images (collection, key);
CREATE TABLE changes_2 (
    seq INTEGER PRIMARY KEY,
    old_seq INTEGER,
    kind TEXT NOT NULL CHECK (kind IN ('upsert', 'delete', 'drop')),
    collection TEXT NOT NULL
);
INSERT INTO changes_2 SELECT seq, old_seq, kind, 'default' FROM changes;
DROP TABLE changes;
ALTER TABLE changes_2 RENAME TO changes;
"""

VERSION_3 = """
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    secret_sha256 TEXT NOT NULL,
    scope TEXT NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    collections TEXT,    -- a JSON list of names, or NULL for every collection
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    version INTEGER NOT NULL  -- the keys' version when this row last changed
);
"""

# Version 4: models kept in the store, and their vectors beside each row (zero-downtime upgrades);
# a log entry may switch the serving model (kind 'model', its version in `model`).
VERSION_4 = """
CREATE TABLE models (
    version TEXT PRIMARY KEY,  -- sha256 of encoder.onnx
    name TEXT NOT NULL,
    dim INTEGER NOT NULL,
    model_json TEXT NOT NULL,
    onnx BLOB NOT NULL,
    added_at REAL NOT NULL
);
CREATE TABLE model_vectors (
    model_version TEXT NOT NULL,
    seq INTEGER NOT NULL,      -- the row's version (images.seq)
    vector BLOB NOT NULL,
    PRIMARY KEY (model_version, seq)
);
CREATE INDEX model_vectors_seq ON model_vectors (seq);
CREATE TABLE changes_2 (
    seq INTEGER PRIMARY KEY,
    old_seq INTEGER,
    kind TEXT NOT NULL CHECK (kind IN ('upsert', 'delete', 'drop', 'model')),
    collection TEXT NOT NULL,
    model TEXT
);
INSERT INTO changes_2 SELECT seq, old_seq, kind, collection, NULL FROM changes;
DROP TABLE changes;
ALTER TABLE changes_2 RENAME TO changes;
"""


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


class SQLiteStore(SQLStore):
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
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read snapshot on this thread's connection."""
        db = self._db
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    def _all(self, sql: str, params: tuple = ()) -> list:
        return self._db.execute(sql, params).fetchall()  # one statement needs no transaction

    def _one(self, sql: str, params: tuple = ()) -> Any:
        return self._db.execute(sql, params).fetchone()

    def _record(self, row: tuple) -> ImageRecord:
        return ImageRecord(row[0], row[1], stored_metadata(row[2], row[1]), *row[3:])

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
            if self._schema_version(db, str(self.path)) < 1:
                run_script(db, VERSION_1)
                used = db.execute(
                    "SELECT MAX(s) FROM (SELECT seq AS s FROM sqlite_sequence "
                    "WHERE name = 'changes' UNION ALL SELECT MAX(seq) FROM images)"
                ).fetchone()[0]
                oldest = db.execute("SELECT MIN(seq) FROM changes").fetchone()[0]
                head = used or 0
                floor = head if oldest is None else oldest - 1
                db.execute("INSERT INTO log_state VALUES (1, ?, ?)", (head, floor))
            if self._schema_version(db, str(self.path)) < 2:
                run_script(db, VERSION_2)
            if self._schema_version(db, str(self.path)) < 3:
                run_script(db, VERSION_3)
            if self._schema_version(db, str(self.path)) < 4:
                run_script(db, VERSION_4)
            self._set_schema_version(db)

    # --- store-wide chores -------------------------------------------------------------------
    @contextmanager
    def chore(self, name: str) -> Iterator[None]:
        with locked(self.data_dir / f".{name}.lock", wait=True):
            yield

    def try_chore(self, name: str) -> AbstractContextManager[bool]:
        return locked(self.data_dir / f".{name}.lock", wait=False)

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

    def _prepare_originals(self, images: list[NewImage], shas: list[str]) -> None:
        try:
            for image, sha in zip(images, shas, strict=True):
                self._write_original(sha, image.content)
        except OSError as exc:
            if _is_disk_full(exc):
                raise StorageFullError("the data dir is full; nothing was stored") from exc
            raise

    def _store_originals(self, db: Executor, images: list[NewImage], shas: list[str]) -> None:
        for image, sha in zip(images, shas, strict=True):
            self._write_original(sha, image.content)  # a delete may have removed it meanwhile

    def _drop_originals(self, db: Executor, shas: list[str]) -> None:
        for sha in shas:
            self._original_path(sha).unlink(missing_ok=True)

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
