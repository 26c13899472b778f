"""What both SQL backends share: the queries of the Store protocol, written once.

The SQL here uses `?` placeholders. Each backend supplies its connections: `_read()` (one
consistent read) and `_write()` (one write transaction), each yielding something with
`execute` and `executemany`; PostgreSQL's turns `?` into psycopg's `%s`. A backend also keeps
the original bytes its own way (`_prepare_originals`, `_store_originals`, `_drop_originals`),
reads metadata as JSON text (`METADATA_TEXT`) and makes a record of a row (`_record`).

Originals are content-addressed and shared by rows with the same bytes. One is dropped only by
`_release_originals`, a write transaction of its own after the one that left it unreferenced;
being a writer, it cannot interleave with an upsert that is adding a row for the same bytes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np

from service import strict_json
from service.store.base import (
    DEFAULT_COLLECTION,
    SCHEMA_VERSION,
    ApiKeyRecord,
    Change,
    ImageRecord,
    KeyNameTaken,
    LogTruncated,
    NewImage,
    RowBatch,
    UnknownCollection,
    change_from,
    now_iso,
    row_batch,
    vector_bytes,
)

RECORD_COLUMNS = (
    "collection, id, metadata, sha256, size, format, created_at, updated_at, model_version, seq"
)


class Executor(Protocol):
    """A connection in a transaction: sqlite3's, or psycopg's behind `?` placeholders."""

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, params: Any, /) -> Any: ...


def run_script(db: Executor, script: str) -> None:
    """Statement by statement (sqlite3's `executescript` would commit the transaction first)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _key_record(row: tuple) -> ApiKeyRecord:
    key_id, name, secret_sha256, scope, collections, created_at, expires_at, revoked_at = row
    return ApiKeyRecord(
        key_id,
        name,
        secret_sha256,
        scope,
        None if collections is None else tuple(strict_json.loads(collections, "collections")),
        created_at,
        expires_at,
        revoked_at,
    )


class _NothingToDelete(Exception):
    """Rolls back a delete of an unknown id or collection (the seq it took is given back)."""


class SQLStore:
    METADATA_TEXT = "metadata"  # the SQL expression that reads metadata as JSON text

    # --- what each backend supplies ---------------------------------------------------------
    def _read(self) -> AbstractContextManager[Executor]:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Executor]:
        raise NotImplementedError

    def _record(self, row: tuple) -> ImageRecord:
        raise NotImplementedError

    def _prepare_originals(self, images: list[NewImage], shas: list[str]) -> None:
        """Before the write transaction (slow work that need not hold the write lock)."""

    def _store_originals(self, db: Executor, images: list[NewImage], shas: list[str]) -> None:
        raise NotImplementedError

    def _drop_originals(self, db: Executor, shas: list[str]) -> None:
        raise NotImplementedError

    def _lock_writers(self, db: Executor) -> None:
        """Make `db`'s transaction a writer, if starting it did not already."""

    def _all(self, sql: str, params: tuple = ()) -> list[Any]:
        with self._read() as db:
            return db.execute(sql, params).fetchall()

    def _one(self, sql: str, params: tuple = ()) -> Any:
        with self._read() as db:
            return db.execute(sql, params).fetchone()

    # --- the schema ---------------------------------------------------------------------------
    @staticmethod
    def _schema_version(db: Executor, where: str) -> int:
        """The schema version `where` has; a newer one than this code knows is refused."""
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{where} has schema version {version}; this lookalike knows up to "
                f"{SCHEMA_VERSION}: upgrade lookalike"
            )
        return version

    @staticmethod
    def _set_schema_version(db: Executor) -> None:
        db.execute(
            "INSERT INTO meta VALUES ('schema_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )

    # --- the model ----------------------------------------------------------------------------
    def model_version(self) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = 'model_version'")
        return row[0] if row else None

    def set_model_version(self, version: str) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO meta VALUES ('model_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (version,),
            )

    # --- writes -------------------------------------------------------------------------------
    @staticmethod
    def _take_seqs(db: Executor, count: int) -> int:
        """Reserve `count` seqs, locking the log's head row until commit; returns the first."""
        head = db.execute(
            "UPDATE log_state SET head = head + ? WHERE id = 1 RETURNING head", (count,)
        ).fetchone()[0]
        return head - count + 1

    # --- collections --------------------------------------------------------------------------
    def collections(self) -> list[tuple[str, int]]:
        return [
            (name, count)
            for name, count in self._all(
                "SELECT c.name, COUNT(i.key) FROM collections c "
                "LEFT JOIN images i ON i.collection = c.name GROUP BY c.name ORDER BY c.name"
            )
        ]

    def has_collection(self, name: str) -> bool:
        return self._one("SELECT 1 FROM collections WHERE name = ?", (name,)) is not None

    def create_collection(self, name: str) -> bool:
        with self._write() as db:
            return (
                db.execute(
                    "INSERT INTO collections VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                    (name, now_iso()),
                ).rowcount
                == 1
            )

    def drop_collection(self, name: str) -> Change | None:
        try:
            with self._write() as db:
                seq = self._take_seqs(db, 1)
                if not db.execute("DELETE FROM collections WHERE name = ?", (name,)).rowcount:
                    raise _NothingToDelete
                shas = [
                    row[0]
                    for row in db.execute(
                        "DELETE FROM images WHERE collection = ? RETURNING sha256", (name,)
                    ).fetchall()
                ]
                db.execute(
                    "INSERT INTO changes (seq, old_seq, kind, collection) VALUES (?, NULL, "
                    "'drop', ?)",
                    (seq, name),
                )
        except _NothingToDelete:
            return None
        self._release_originals(shas)
        return Change(seq, name, None, None, drop=True)

    @staticmethod
    def _require_collection(db: Executor, name: str) -> None:
        """Inside a writer: the collection exists (a concurrent drop has not won)."""
        if not db.execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone():
            raise UnknownCollection(f"no collection named {name!r}")

    # --- images -------------------------------------------------------------------------------
    def upsert(
        self, images: list[NewImage], model_version: str, collection: str = DEFAULT_COLLECTION
    ) -> list[tuple[bool, Change]]:
        shas = [hashlib.sha256(image.content).hexdigest() for image in images]
        self._prepare_originals(images, shas)
        with self._write() as db:
            first = self._take_seqs(db, len(images))
            self._require_collection(db, collection)
            marks = ",".join("?" * len(images))
            old = {
                image_id: (seq, sha)
                for image_id, seq, sha in db.execute(
                    f"SELECT id, seq, sha256 FROM images WHERE collection = ? AND id IN ({marks})",
                    [collection, *(image.id for image in images)],
                ).fetchall()
            }
            self._store_originals(db, images, shas)
            now, metadata = now_iso(), [strict_json.dumps(image.metadata) for image in images]
            seqs = range(first, first + len(images))
            old_seqs = [old[image.id][0] if image.id in old else None for image in images]
            db.executemany(
                "INSERT INTO changes (seq, old_seq, kind, collection) VALUES (?, ?, 'upsert', ?)",
                [(seq, old_seq, collection) for seq, old_seq in zip(seqs, old_seqs, strict=True)],
            )
            db.executemany(
                "INSERT INTO images (collection, id, metadata, sha256, size, format, created_at, "
                "updated_at, model_version, vector, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (collection, id) DO UPDATE SET metadata = excluded.metadata, "
                "sha256 = excluded.sha256, size = excluded.size, format = excluded.format, "
                "updated_at = excluded.updated_at, model_version = excluded.model_version, "
                "vector = excluded.vector, seq = excluded.seq",
                [
                    (
                        collection,
                        image.id,
                        meta,
                        sha,
                        len(image.content),
                        image.format,
                        now,
                        now,
                        model_version,
                        vector_bytes(image.vector),
                        seq,
                    )
                    for image, meta, sha, seq in zip(images, metadata, shas, seqs, strict=True)
                ],
            )
        self._release_originals([sha for _, sha in old.values() if sha not in shas])
        return [
            (
                old_seq is None,
                change_from(
                    seq, collection, "upsert", old_seq, vector_bytes(image.vector), image.id, meta
                ),
            )
            for image, meta, seq, old_seq in zip(images, metadata, seqs, old_seqs, strict=True)
        ]

    def delete(self, image_id: str, collection: str = DEFAULT_COLLECTION) -> Change | None:
        try:
            with self._write() as db:
                seq = self._take_seqs(db, 1)
                row = db.execute(
                    "DELETE FROM images WHERE collection = ? AND id = ? RETURNING seq, sha256",
                    (collection, image_id),
                ).fetchone()
                if row is None:
                    raise _NothingToDelete
                db.execute(
                    "INSERT INTO changes (seq, old_seq, kind, collection) "
                    "VALUES (?, ?, 'delete', ?)",
                    (seq, row[0], collection),
                )
        except _NothingToDelete:
            return None
        self._release_originals([row[1]])
        return Change(seq, collection, row[0], None)

    def _release_originals(self, shas: list[str]) -> None:
        """Drop the originals among `shas` that no row points at any more."""
        if not shas:
            return
        with self._write() as db:
            self._lock_writers(db)
            orphans = [
                sha
                for sha in set(shas)
                if not db.execute(
                    "SELECT 1 FROM images WHERE sha256 = ? LIMIT 1", (sha,)
                ).fetchone()
            ]
            self._drop_originals(db, orphans)

    def replace_vectors(
        self, updates: list[tuple[ImageRecord, np.ndarray]], model_version: str
    ) -> int:
        changed = 0
        with self._write() as db:
            seq = self._take_seqs(db, len(updates))
            for record, vector in updates:
                done = db.execute(
                    "UPDATE images SET vector = ?, model_version = ?, seq = ? WHERE seq = ?",
                    (vector_bytes(vector), model_version, seq, record.seq),
                ).rowcount
                if done:
                    db.execute(
                        "INSERT INTO changes (seq, old_seq, kind, collection) "
                        "VALUES (?, ?, 'upsert', ?)",
                        (seq, record.seq, record.collection),
                    )
                    changed += 1
                seq += 1
        return changed

    # --- reads --------------------------------------------------------------------------------
    def count(self, collection: str | None = None) -> int:
        if collection is None:
            return self._one("SELECT COUNT(*) FROM images")[0]
        return self._one("SELECT COUNT(*) FROM images WHERE collection = ?", (collection,))[0]

    def last_seq(self) -> int:
        return self._one("SELECT head FROM log_state WHERE id = 1")[0]

    def get(self, image_id: str, collection: str = DEFAULT_COLLECTION) -> ImageRecord | None:
        row = self._one(
            f"SELECT {RECORD_COLUMNS} FROM images WHERE collection = ? AND id = ?",
            (collection, image_id),
        )
        return self._record(row) if row else None

    def sample_originals(self, size: int) -> list[str]:
        rows = self._all("SELECT DISTINCT sha256 FROM images ORDER BY sha256 LIMIT ?", (size,))
        return [row[0] for row in rows]

    def page(
        self, *, after_key: int, limit: int, collection: str = DEFAULT_COLLECTION
    ) -> tuple[list[ImageRecord], int | None]:
        rows = self._all(
            f"SELECT {RECORD_COLUMNS}, key FROM images WHERE collection = ? AND key > ? "
            "ORDER BY key LIMIT ?",
            (collection, after_key, limit + 1),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return [self._record(r[:-1]) for r in rows], (rows[-1][-1] if more else None)

    def by_seq(self, seqs: list[int]) -> list[ImageRecord]:
        if not seqs:
            return []
        marks = ",".join("?" * len(seqs))
        rows = self._all(
            f"SELECT {RECORD_COLUMNS} FROM images WHERE seq IN ({marks}) ORDER BY seq", tuple(seqs)
        )
        return [self._record(r) for r in rows]

    def rows(self, collection: str, *, max_seq: int, batch: int = 10_000) -> Iterator[RowBatch]:
        after = -1
        while rows := self._all(
            f"SELECT seq, vector, id, {self.METADATA_TEXT} FROM images "
            "WHERE collection = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (collection, after, max_seq, batch),
        ):
            after = rows[-1][0]
            yield row_batch(rows)

    def changes_since(self, seq: int) -> list[Change]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT c.seq, c.collection, c.kind, c.old_seq, i.vector, i.id, "
                f"i.{self.METADATA_TEXT} FROM changes c "
                "LEFT JOIN images i ON i.seq = c.seq WHERE c.seq > ? ORDER BY c.seq",
                (seq,),
            ).fetchall()
            # Read after the changes: a prune that committed in between shows up here.
            floor = db.execute("SELECT floor FROM log_state WHERE id = 1").fetchone()[0]
        if seq < floor:
            raise LogTruncated(f"changes after {seq} were pruned (the log starts after {floor})")
        return [change_from(*row) for row in rows]

    def stale(self, model_version: str, batch: int = 256) -> Iterator[list[ImageRecord]]:
        after = -1
        while rows := self._all(
            f"SELECT {RECORD_COLUMNS}, key FROM images WHERE model_version != ? "
            "AND key > ? ORDER BY key LIMIT ?",
            (model_version, after, batch),
        ):
            after = rows[-1][-1]
            yield [self._record(r[:-1]) for r in rows]

    def count_stale(self, model_version: str) -> int:
        return self._one("SELECT COUNT(*) FROM images WHERE model_version != ?", (model_version,))[
            0
        ]

    # --- API keys -----------------------------------------------------------------------------
    KEY_COLUMNS = "id, name, secret_sha256, scope, collections, created_at, expires_at, revoked_at"

    def add_key(self, key: ApiKeyRecord) -> None:
        collections = None if key.collections is None else strict_json.dumps(key.collections)
        with self._write() as db:
            self._lock_writers(db)
            if db.execute("SELECT 1 FROM api_keys WHERE name = ?", (key.name,)).fetchone():
                raise KeyNameTaken(f"a key named {key.name!r} exists already")
            db.execute(
                f"INSERT INTO api_keys ({self.KEY_COLUMNS}, version) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, NULL, (SELECT COALESCE(MAX(version), 0) + 1 FROM api_keys))",
                (
                    key.id,
                    key.name,
                    key.secret_sha256,
                    key.scope,
                    collections,
                    key.created_at,
                    key.expires_at,
                ),
            )

    def revoke_key(self, id_or_name: str) -> ApiKeyRecord | None:
        with self._write() as db:
            self._lock_writers(db)
            row = db.execute(
                f"UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?), "
                "version = (SELECT MAX(version) + 1 FROM api_keys) "
                f"WHERE id = ? OR name = ? RETURNING {self.KEY_COLUMNS}",
                (time.time(), id_or_name, id_or_name),
            ).fetchone()
        return None if row is None else _key_record(row)

    def api_keys(self) -> list[ApiKeyRecord]:
        rows = self._all(f"SELECT {self.KEY_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [_key_record(row) for row in rows]

    def keys_version(self) -> int:
        return self._one("SELECT COALESCE(MAX(version), 0) FROM api_keys")[0]

    # --- the log's consumers --------------------------------------------------------------------
    def ack(self, consumer: str, seq: int) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO log_consumers VALUES (?, ?, ?) ON CONFLICT (name) "
                "DO UPDATE SET seq = excluded.seq, seen_at = excluded.seen_at",
                (consumer, seq, time.time()),
            )

    def forget(self, consumer: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM log_consumers WHERE name = ?", (consumer,))

    def prune_log(self, retention_s: float) -> int:
        with self._write() as db:
            db.execute("DELETE FROM log_consumers WHERE seen_at < ?", (time.time() - retention_s,))
            slowest = db.execute("SELECT MIN(seq) FROM log_consumers").fetchone()[0]
            head, floor = db.execute("SELECT head, floor FROM log_state WHERE id = 1").fetchone()
            new_floor = max(floor, head if slowest is None else slowest)
            if new_floor > floor:
                db.execute("DELETE FROM changes WHERE seq <= ?", (new_floor,))
                db.execute("UPDATE log_state SET floor = ? WHERE id = 1", (new_floor,))
            return new_floor
