"""The shared store: PostgreSQL, for any number of replicas on any number of machines.

Everything the truth holds lives in the database: the rows, the vectors, the change log and the
original bytes (content-addressed, in `originals`), so replicas share nothing else. psycopg 3
with a connection pool; connections run in autocommit, and every write is one explicit
transaction that starts by taking seqs from the log's head row. That row lock serialises
writers across replicas, so seqs are handed out in commit order and a reader that has seen
seq N has seen every change up to N.

When the database goes away, every call fails within a bounded time (connect timeout, pool
timeout, TCP keepalives) with `StoreUnavailable`, and the pool reconnects by itself once the
database is back.
"""

from __future__ import annotations

import datetime as dt
import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from service.store.base import (
    SCHEMA_VERSION,
    ImageRecord,
    NewImage,
    StorageFullError,
    StoreUnavailable,
)
from service.store.sql import Executor, SQLStore, run_script

log = logging.getLogger(__name__)

MIGRATIONS = {
    1: """
CREATE TABLE images (
    key BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    metadata JSONB NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    format TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    model_version TEXT NOT NULL,
    vector BYTEA NOT NULL,
    seq BIGINT NOT NULL UNIQUE
);
CREATE INDEX images_sha256 ON images (sha256);
CREATE TABLE originals (sha256 TEXT PRIMARY KEY, content BYTEA NOT NULL);
CREATE TABLE changes (
    seq BIGINT PRIMARY KEY,
    old_seq BIGINT,
    kind TEXT NOT NULL CHECK (kind IN ('upsert', 'delete'))
);
CREATE TABLE log_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    head BIGINT NOT NULL,
    floor BIGINT NOT NULL
);
INSERT INTO log_state VALUES (1, 0, 0);
CREATE TABLE log_consumers (
    name TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    seen_at DOUBLE PRECISION NOT NULL  -- epoch seconds
);
""",
    2: """
CREATE TABLE collections (name TEXT PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL);
INSERT INTO collections VALUES ('default', now());
ALTER TABLE images ADD COLUMN collection TEXT NOT NULL DEFAULT 'default';
ALTER TABLE images ALTER COLUMN collection DROP DEFAULT;
ALTER TABLE images DROP CONSTRAINT images_id_key;
ALTER TABLE images ADD CONSTRAINT images_collection_id_key UNIQUE (collection, id);
CREATE INDEX images_collection_key ON images (collection, key);
ALTER TABLE changes ADD COLUMN collection TEXT NOT NULL DEFAULT 'default';
ALTER TABLE changes ALTER COLUMN collection DROP DEFAULT;
ALTER TABLE changes DROP CONSTRAINT changes_kind_check;
ALTER TABLE changes ADD CONSTRAINT changes_kind_check CHECK (kind IN ('upsert', 'delete', 'drop'));
""",
    3: """
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    secret_sha256 TEXT NOT NULL,
    scope TEXT NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    collections TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION,
    version BIGINT NOT NULL
);
""",
    4: """
CREATE TABLE models (
    version TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    dim INTEGER NOT NULL,
    model_json TEXT NOT NULL,
    onnx BYTEA NOT NULL,
    added_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE model_vectors (
    model_version TEXT NOT NULL,
    seq BIGINT NOT NULL,
    vector BYTEA NOT NULL,
    PRIMARY KEY (model_version, seq)
);
CREATE INDEX model_vectors_seq ON model_vectors (seq);
ALTER TABLE changes ADD COLUMN model TEXT;
ALTER TABLE changes DROP CONSTRAINT changes_kind_check;
ALTER TABLE changes ADD CONSTRAINT changes_kind_check
    CHECK (kind IN ('upsert', 'delete', 'drop', 'model'));
""",
}

# Bounded failure when the server or the network goes away; the user's URL may override each.
CONNECTION_DEFAULTS = {
    "connect_timeout": "3",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
    "application_name": "lookalike",
}


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def _lock_key(name: str) -> int:
    return zlib.crc32(f"lookalike:{name}".encode())


def connection_string(url: str) -> str:
    given = conninfo_to_dict(url)
    return make_conninfo(url, **{k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given})


def redacted(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = conninfo_to_dict(url)
    parts.pop("password", None)
    return make_conninfo("", **{k: v for k, v in parts.items() if v is not None})


class _QmarkConnection:
    """A psycopg connection that takes the shared SQL's `?` placeholders."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: tuple | list = ()) -> psycopg.Cursor[Any]:
        return self.conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]

    def executemany(self, sql: str, params: list) -> None:
        with self.conn.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), params)  # type: ignore[arg-type]


class PostgresStore(SQLStore):
    backend = "postgresql"
    METADATA_TEXT = "metadata::text"

    def __init__(self, url: str, *, pool_size: int = 8, pool_timeout_s: float = 5.0) -> None:
        self._conninfo = connection_string(url)
        self.where = redacted(url)
        self._pool = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=pool_size,
            timeout=pool_timeout_s,
            kwargs={"autocommit": True, "options": "-c timezone=UTC"},
            name="lookalike",
            open=False,
        )
        self._pool.open(wait=False)

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def _failures(self) -> Iterator[None]:
        """psycopg's failures as the store's own: 503 when the database is away, 507 when full."""
        try:
            yield
        except pg_errors.DiskFull as exc:
            raise StorageFullError("the database is out of space; nothing was stored") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise StoreUnavailable(f"the database is unavailable ({self.where}): {exc}") from exc

    @contextmanager
    def _read(self) -> Iterator[_QmarkConnection]:
        """A pooled connection in autocommit: each statement sees what has committed."""
        with self._failures(), self._pool.connection() as conn:
            yield _QmarkConnection(conn)

    @contextmanager
    def _write(self) -> Iterator[_QmarkConnection]:
        with self._failures(), self._pool.connection() as conn, conn.transaction():
            yield _QmarkConnection(conn)

    def _record(self, row: tuple) -> ImageRecord:
        name, image_id, metadata, sha, size, fmt, created, updated, version, seq = row
        created, updated = _iso(created), _iso(updated)
        return ImageRecord(name, image_id, metadata, sha, size, fmt, created, updated, version, seq)

    def migrate(self) -> None:
        with self._write() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (_lock_key("schema"),))
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            version = self._schema_version(db, f"the database ({self.where})")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                run_script(db, MIGRATIONS[target])
                log.info("database schema upgraded", extra={"version": target})
            self._set_schema_version(db)

    @contextmanager
    def chore(self, name: str) -> Iterator[None]:
        with self._failures(), psycopg.connect(self._conninfo, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_lock_key(name),))
            yield

    @contextmanager
    def try_chore(self, name: str) -> Iterator[bool]:
        with self._failures(), psycopg.connect(self._conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(name),)).fetchone()
            yield bool(row and row[0])  # a session lock: it goes with the connection

    # --- originals: rows of their own, in the same transactions as the images ---------------
    def _store_originals(self, db: Executor, images: list[NewImage], shas: list[str]) -> None:
        db.executemany(
            "INSERT INTO originals VALUES (?, ?) ON CONFLICT (sha256) DO NOTHING",
            [(sha, image.content) for sha, image in zip(shas, images, strict=True)],
        )

    def _lock_writers(self, db: Executor) -> None:
        db.execute("SELECT head FROM log_state WHERE id = 1 FOR UPDATE")

    def _drop_originals(self, db: Executor, shas: list[str]) -> None:
        db.executemany("DELETE FROM originals WHERE sha256 = ?", [(sha,) for sha in shas])

    def read_original(self, sha256: str) -> bytes | None:
        row = self._one("SELECT content FROM originals WHERE sha256 = ?", (sha256,))
        return bytes(row[0]) if row else None
