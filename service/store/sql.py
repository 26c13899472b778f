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
    ModelArtifact,
    ModelNotReady,
    ModelsChanged,
    NewImage,
    RowBatch,
    StoredModel,
    UnknownCollection,
    change_from,
    now_iso,
    row_batch,
    vector_bytes,
)

RECORD_COLUMNS = (
    "collection, id, metadata, sha256, size, format, created_at, updated_at, model_version, seq"
)
# A row's vector of model ? (bound twice): its own, if that model made it, else the one kept
# beside it for that model (NULL when there is none yet). Rows hold the vector of the model that
# served when they were written; model_vectors holds the other kept models' (keyed by the row's
# seq, so an overwritten row's vectors go with it).
VECTOR_OF_MODEL = "CASE WHEN i.model_version = ? THEN i.vector ELSE mv.vector END"
JOIN_MODEL_VECTORS = "LEFT JOIN model_vectors mv ON mv.model_version = ? AND mv.seq = i.seq"


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
            self._set_meta(db, "model_version", version)

    def previous_model(self) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = 'previous_model'")
        return row[0] if row else None

    # --- kept models --------------------------------------------------------------------------
    MODEL_COLUMNS = "version, name, dim, model_json, onnx"

    def add_model(self, artifact: ModelArtifact) -> bool:
        with self._write() as db:
            self._lock_writers(db)  # a writer that has read the kept models waits for this one
            return (
                db.execute(
                    f"INSERT INTO models ({self.MODEL_COLUMNS}, added_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (version) DO NOTHING",
                    (
                        artifact.version,
                        artifact.name,
                        artifact.dim,
                        artifact.model_json,
                        artifact.onnx,
                        time.time(),
                    ),
                ).rowcount
                == 1
            )

    def models(self) -> list[StoredModel]:
        active = self.model_version()
        with self._read() as db:
            total = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            kept = db.execute(
                "SELECT version, name, dim, added_at FROM models ORDER BY added_at, version"
            ).fetchall()
            return [
                StoredModel(
                    version,
                    name,
                    dim,
                    added_at,
                    version == active,
                    # The serving model has every vector: activation and every write see to it.
                    total if version == active else total - self._count_missing(db, version),
                )
                for version, name, dim, added_at in kept
            ]

    def kept_models(self) -> list[str]:
        rows = self._all("SELECT version FROM models ORDER BY added_at, version")
        return [row[0] for row in rows]

    def model_artifact(self, version: str) -> ModelArtifact | None:
        row = self._one(f"SELECT {self.MODEL_COLUMNS} FROM models WHERE version = ?", (version,))
        if row is None:
            return None
        version, name, dim, model_json, onnx = row
        return ModelArtifact(version, name, dim, model_json, bytes(onnx))

    def activate_model(self, version: str) -> Change:
        with self._write() as db:
            seq = self._take_seqs(db, 1)
            if not db.execute("SELECT 1 FROM models WHERE version = ?", (version,)).fetchone():
                raise ModelNotReady(f"no kept model has the version {version}")
            if missing := self._count_missing(db, version):
                raise ModelNotReady(f"{missing} stored images have no vector of {version} yet")
            active = self._meta(db, "model_version")
            if version == active:
                raise ModelNotReady(f"{version} serves already")
            self._set_meta(db, "model_version", version)
            if active is not None:
                self._set_meta(db, "previous_model", active)
            db.execute(
                "INSERT INTO changes (seq, old_seq, kind, collection, model) "
                "VALUES (?, NULL, 'model', '', ?)",
                (seq, version),
            )
        return Change(seq, "", None, None, activates=version)

    def remove_model(self, version: str) -> bool:
        with self._write() as db:
            self._lock_writers(db)
            if version == self._meta(db, "model_version"):
                raise ModelNotReady(f"{version} serves: activate another model first")
            if not db.execute("DELETE FROM models WHERE version = ?", (version,)).rowcount:
                return False
            # Rows it made while it served take the serving model's vector in its place.
            active = self._meta(db, "model_version")
            db.execute(
                "UPDATE images SET vector = (SELECT mv.vector FROM model_vectors mv WHERE "
                "mv.model_version = ? AND mv.seq = images.seq), model_version = ? "
                "WHERE model_version = ?",
                (active, active, version),
            )
            db.execute("DELETE FROM model_vectors WHERE model_version = ?", (version,))
            db.execute(
                "DELETE FROM model_vectors WHERE model_version = ? AND seq IN "
                "(SELECT seq FROM images WHERE model_version = ?)",
                (active, active),
            )
            if version == self._meta(db, "previous_model"):
                db.execute("DELETE FROM meta WHERE key = 'previous_model'")
        return True

    @staticmethod
    def _set_meta(db: Executor, key: str, value: str) -> None:
        db.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @staticmethod
    def _meta(db: Executor, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _count_missing(db: Executor, version: str) -> int:
        return db.execute(
            "SELECT COUNT(*) FROM images i WHERE i.model_version != ? AND NOT EXISTS "
            "(SELECT 1 FROM model_vectors mv WHERE mv.model_version = ? AND mv.seq = i.seq)",
            (version, version),
        ).fetchone()[0]

    def count_missing(self, version: str) -> int:
        with self._read() as db:
            return self._count_missing(db, version)

    def missing_vectors(self, version: str, batch: int = 256) -> Iterator[list[ImageRecord]]:
        after = -1
        while rows := self._all(
            f"SELECT {RECORD_COLUMNS}, key FROM images i WHERE i.model_version != ? AND NOT "
            "EXISTS (SELECT 1 FROM model_vectors mv WHERE mv.model_version = ? AND "
            "mv.seq = i.seq) AND i.key > ? ORDER BY i.key LIMIT ?",
            (version, version, after, batch),
        ):
            after = rows[-1][-1]
            yield [self._record(r[:-1]) for r in rows]

    def add_vectors(self, version: str, vectors: list[tuple[ImageRecord, np.ndarray]]) -> int:
        added = 0
        with self._write() as db:
            if not db.execute("SELECT 1 FROM models WHERE version = ?", (version,)).fetchone():
                return 0  # removed meanwhile
            for record, vector in vectors:
                added += db.execute(
                    "INSERT INTO model_vectors (model_version, seq, vector) SELECT ?, ?, ? "
                    "WHERE EXISTS (SELECT 1 FROM images WHERE seq = ?) "
                    "ON CONFLICT (model_version, seq) DO NOTHING",
                    (version, record.seq, vector_bytes(vector), record.seq),
                ).rowcount
        return added

    @staticmethod
    def _kept_models(db: Executor) -> set[str]:
        return {row[0] for row in db.execute("SELECT version FROM models").fetchall()}

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
                db.execute(
                    "DELETE FROM model_vectors WHERE seq IN "
                    "(SELECT seq FROM images WHERE collection = ?)",
                    (name,),
                )
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
    def _require_vectors(images: list[NewImage], models: set[str]) -> None:
        """Inside a writer: every image brings a vector of every other kept model."""
        for image in images:
            if missing := models - set(image.more_vectors):
                raise ModelsChanged(
                    f"the store keeps models {sorted(missing)} that this write brings no "
                    "vectors of; embed with them and write again"
                )

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
            kept = self._kept_models(db)
            if kept and model_version not in kept:
                raise ModelsChanged(f"the store no longer keeps model {model_version}")
            others = kept - {model_version}
            self._require_vectors(images, others)
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
            db.executemany(
                "DELETE FROM model_vectors WHERE seq = ?",
                [(seq,) for seq in old_seqs if seq is not None],
            )
            db.executemany(
                "INSERT INTO model_vectors (model_version, seq, vector) VALUES (?, ?, ?)",
                [
                    (version, seq, vector_bytes(image.more_vectors[version]))
                    for image, seq in zip(images, seqs, strict=True)
                    for version in others
                ],
            )
        self._release_originals([sha for _, sha in old.values() if sha not in shas])
        return [
            (
                old_seq is None,
                change_from(
                    seq,
                    collection,
                    "upsert",
                    old_seq,
                    vector_bytes(image.vector),
                    image.id,
                    meta,
                    None,
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
                db.execute("DELETE FROM model_vectors WHERE seq = ?", (row[0],))
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
                    db.execute("UPDATE model_vectors SET seq = ? WHERE seq = ?", (seq, record.seq))
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

    def rows(
        self, collection: str, *, max_seq: int, model: str, batch: int = 10_000
    ) -> Iterator[RowBatch]:
        after = -1
        while rows := self._all(
            f"SELECT i.seq, {VECTOR_OF_MODEL}, i.id, i.{self.METADATA_TEXT} FROM images i "
            f"{JOIN_MODEL_VECTORS} WHERE i.collection = ? AND i.seq > ? AND i.seq <= ? "
            "AND (i.model_version = ? OR mv.vector IS NOT NULL) ORDER BY i.seq LIMIT ?",
            (model, model, collection, after, max_seq, model, batch),
        ):
            after = rows[-1][0]
            yield row_batch(rows)

    def changes_since(self, seq: int, model: str) -> list[Change]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT c.seq, c.collection, c.kind, c.old_seq, {VECTOR_OF_MODEL}, i.id, "
                f"i.{self.METADATA_TEXT}, c.model FROM changes c "
                f"LEFT JOIN images i ON i.seq = c.seq {JOIN_MODEL_VECTORS} "
                "WHERE c.seq > ? ORDER BY c.seq",
                (model, model, seq),
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
