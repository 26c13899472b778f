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
import hashlib
import json
import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

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
    seen_at TIMESTAMPTZ NOT NULL
);
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

RECORD_COLUMNS = "id, metadata, sha256, size, format, created_at, updated_at, model_version, seq"


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def _record(row: tuple) -> ImageRecord:
    image_id, metadata, sha, size, fmt, created, updated, version, seq = row
    return ImageRecord(
        image_id, metadata, sha, size, fmt, _iso(created), _iso(updated), version, seq
    )


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


class _Rollback(Exception):
    pass


class PostgresStore:
    backend = "postgresql"

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
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        with self._failures(), self._pool.connection() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection[Any]]:
        with self._conn() as conn, conn.transaction():
            yield conn

    def migrate(self) -> None:
        with self._write() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("schema"),))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the database has schema version {version}; this lookalike knows up to "
                    f"{SCHEMA_VERSION}: upgrade lookalike"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)  # type: ignore[call-overload]
                log.info("database schema upgraded", extra={"version": target})
            conn.execute(
                "INSERT INTO meta VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(SCHEMA_VERSION),),
            )

    # --- the model and store-wide chores ------------------------------------------------------
    def model_version(self) -> str | None:
        with self._conn() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'model_version'").fetchone()
        return row[0] if row else None

    def set_model_version(self, version: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO meta VALUES ('model_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (version,),
            )

    @contextmanager
    def chore(self, name: str) -> Iterator[None]:
        with self._failures(), psycopg.connect(self._conninfo, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_lock_key(name),))
            yield

    # --- writes -------------------------------------------------------------------------------
    @staticmethod
    def _take_seqs(conn: psycopg.Connection[Any], count: int) -> int:
        """Reserve `count` seqs (locking the head row until commit); returns the first."""
        row = conn.execute(
            "UPDATE log_state SET head = head + %s WHERE id = 1 RETURNING head", (count,)
        ).fetchone()
        assert row is not None
        return row[0] - count + 1

    def upsert(self, images: list[NewImage], model_version: str) -> list[tuple[bool, Change]]:
        shas = [hashlib.sha256(image.content).hexdigest() for image in images]
        now = now_iso()
        with self._write() as conn:
            first = self._take_seqs(conn, len(images))
            seqs = list(range(first, first + len(images)))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO originals VALUES (%s, %s) ON CONFLICT (sha256) DO NOTHING",
                    [(sha, image.content) for sha, image in zip(shas, images, strict=True)],
                )
                replaced = {
                    image_id: (seq, sha)
                    for image_id, seq, sha in cur.execute(
                        "SELECT id, seq, sha256 FROM images WHERE id = ANY(%s)",
                        ([image.id for image in images],),
                    ).fetchall()
                }
                old = {image_id: seq for image_id, (seq, _) in replaced.items()}
                cur.executemany(
                    "INSERT INTO changes VALUES (%s, %s, 'upsert')",
                    [(seq, old.get(image.id)) for seq, image in zip(seqs, images, strict=True)],
                )
                cur.executemany(
                    "INSERT INTO images (id, metadata, sha256, size, format, created_at, "
                    "updated_at, model_version, vector, seq) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET metadata = EXCLUDED.metadata, "
                    "sha256 = EXCLUDED.sha256, size = EXCLUDED.size, format = EXCLUDED.format, "
                    "updated_at = EXCLUDED.updated_at, model_version = EXCLUDED.model_version, "
                    "vector = EXCLUDED.vector, seq = EXCLUDED.seq",
                    [
                        (
                            image.id,
                            json.dumps(image.metadata),
                            sha,
                            len(image.content),
                            image.format,
                            now,
                            now,
                            model_version,
                            vector_bytes(image.vector),
                            seq,
                        )
                        for image, sha, seq in zip(images, shas, seqs, strict=True)
                    ],
                )
                self._drop_orphans(cur, [sha for _, sha in replaced.values()])
        return [
            (
                image.id not in old,
                change_from(
                    seq,
                    old.get(image.id),
                    vector_bytes(image.vector),
                    image.id,
                    json.dumps(image.metadata),
                ),
            )
            for image, seq in zip(images, seqs, strict=True)
        ]

    @staticmethod
    def _drop_orphans(cur: psycopg.Cursor[Any], shas: list[str]) -> None:
        if shas:
            cur.execute(
                "DELETE FROM originals o WHERE o.sha256 = ANY(%s) "
                "AND NOT EXISTS (SELECT 1 FROM images i WHERE i.sha256 = o.sha256)",
                (shas,),
            )

    def delete(self, image_id: str) -> Change | None:
        try:
            with self._write() as conn:
                seq = self._take_seqs(conn, 1)
                row = conn.execute(
                    "DELETE FROM images WHERE id = %s RETURNING seq, sha256", (image_id,)
                ).fetchone()
                if row is None:
                    raise _Rollback
                conn.execute("INSERT INTO changes VALUES (%s, %s, 'delete')", (seq, row[0]))
                with conn.cursor() as cur:
                    self._drop_orphans(cur, [row[1]])
        except _Rollback:
            return None
        return Change(seq, row[0], None)

    def replace_vectors(
        self, updates: list[tuple[ImageRecord, np.ndarray]], model_version: str
    ) -> int:
        changed = 0
        with self._write() as conn:
            seq = self._take_seqs(conn, len(updates))
            for record, vector in updates:
                done = conn.execute(
                    "UPDATE images SET vector = %s, model_version = %s, seq = %s "
                    "WHERE id = %s AND seq = %s",
                    (vector_bytes(vector), model_version, seq, record.id, record.seq),
                ).rowcount
                if done:
                    conn.execute("INSERT INTO changes VALUES (%s, %s, 'upsert')", (seq, record.seq))
                    changed += 1
                seq += 1
        return changed

    # --- reads --------------------------------------------------------------------------------
    def _one(self, query: str, params: tuple = ()) -> tuple | None:
        with self._conn() as conn:
            return conn.execute(query, params).fetchone()  # type: ignore[arg-type]

    def _all(self, query: str, params: tuple = ()) -> list[tuple]:
        with self._conn() as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def count(self) -> int:
        row = self._one("SELECT COUNT(*) FROM images")
        return row[0] if row else 0

    def last_seq(self) -> int:
        row = self._one("SELECT head FROM log_state WHERE id = 1")
        return row[0] if row else 0

    def get(self, image_id: str) -> ImageRecord | None:
        row = self._one(f"SELECT {RECORD_COLUMNS} FROM images WHERE id = %s", (image_id,))
        return _record(row) if row else None

    def read_original(self, sha256: str) -> bytes | None:
        row = self._one("SELECT content FROM originals WHERE sha256 = %s", (sha256,))
        return bytes(row[0]) if row else None

    def page(self, *, after_key: int, limit: int) -> tuple[list[ImageRecord], int | None]:
        rows = self._all(
            f"SELECT {RECORD_COLUMNS}, key FROM images WHERE key > %s ORDER BY key LIMIT %s",
            (after_key, limit + 1),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return [_record(r[:-1]) for r in rows], (rows[-1][-1] if more else None)

    def rows(self, *, max_seq: int, batch: int = 10_000) -> Iterator[RowBatch]:
        after = -1
        while True:
            rows = self._all(
                "SELECT seq, vector, id, metadata::text FROM images WHERE seq > %s AND seq <= %s "
                "ORDER BY seq LIMIT %s",
                (after, max_seq, batch),
            )
            if not rows:
                return
            after = rows[-1][0]
            yield row_batch(rows)

    def changes_since(self, seq: int) -> list[Change]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT c.seq, c.old_seq, i.vector, i.id, i.metadata::text FROM changes c "
                "LEFT JOIN images i ON i.seq = c.seq WHERE c.seq > %s ORDER BY c.seq",
                (seq,),
            ).fetchall()
            floor_row = conn.execute("SELECT floor FROM log_state WHERE id = 1").fetchone()
        floor = floor_row[0] if floor_row else 0
        # Read after the changes: a prune that committed in between shows up here.
        if seq < floor:
            raise LogTruncated(f"changes after {seq} were pruned (the log starts after {floor})")
        return [change_from(*row) for row in rows]

    def stale(self, model_version: str, batch: int = 256) -> Iterator[list[ImageRecord]]:
        after = -1
        while True:
            rows = self._all(
                f"SELECT {RECORD_COLUMNS}, key FROM images WHERE model_version != %s "
                "AND key > %s ORDER BY key LIMIT %s",
                (model_version, after, batch),
            )
            if not rows:
                return
            after = rows[-1][-1]
            yield [_record(r[:-1]) for r in rows]

    def count_stale(self, model_version: str) -> int:
        row = self._one("SELECT COUNT(*) FROM images WHERE model_version != %s", (model_version,))
        return row[0] if row else 0

    def get_vector(self, image_id: str) -> np.ndarray | None:
        row = self._one("SELECT vector FROM images WHERE id = %s", (image_id,))
        return vector_from(row[0]) if row else None

    # --- the log's consumers --------------------------------------------------------------------
    def ack(self, consumer: str, seq: int) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO log_consumers VALUES (%s, %s, now()) ON CONFLICT (name) "
                "DO UPDATE SET seq = EXCLUDED.seq, seen_at = EXCLUDED.seen_at",
                (consumer, seq),
            )

    def forget(self, consumer: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM log_consumers WHERE name = %s", (consumer,))

    def prune_log(self, retention_s: float) -> int:
        with self._write() as conn:
            conn.execute(
                "DELETE FROM log_consumers WHERE seen_at < now() - make_interval(secs => %s)",
                (retention_s,),
            )
            slowest = conn.execute("SELECT MIN(seq) FROM log_consumers").fetchone()
            state = conn.execute("SELECT head, floor FROM log_state WHERE id = 1").fetchone()
            assert slowest is not None and state is not None
            head, floor = state
            new_floor = max(floor, head if slowest[0] is None else slowest[0])
            if new_floor > floor:
                conn.execute("DELETE FROM changes WHERE seq <= %s", (new_floor,))
                conn.execute("UPDATE log_state SET floor = %s WHERE id = 1", (new_floor,))
            return new_floor
