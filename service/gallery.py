"""The gallery: the only way in for routes. It keeps the store (truth) and this process's index
view (derived from the store's change log) in step, for every collection.

- **Writes** commit to the store first; the view then catches up from the log. A crash between
  the two loses nothing: the log still holds the change.
- **Collections** each have their own ids and index; every method takes the collection's name
  (`default` unless given). An unknown one raises `UnknownCollection`, checked against the store
  only when an answer comes back empty, so a hit costs no extra query.
- **Reads** first bring the view up to the store's latest seq (one cheap query), so a write
  acknowledged by any process is seen by the next read in every process. When the store cannot
  be reached, searches answer from the view as it stands, and the check is skipped for a moment
  so they stay fast.
- **A follower thread** catches the view up at least every `follow_interval_s`, reports this
  process's position to the log, and does the chores: snapshots of the index (one writer per data
  dir, under a file lock) and rebuilds when the index kind or its tombstones call for one.
- **Start-up** re-embeds the stored originals after a model change (SQLite: one process does it
  while the others wait; PostgreSQL: refused, see `check_model`), then loads the snapshot (or
  rebuilds from the rows) and catches up.

Every method blocks: routes call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np

from service.config import Settings
from service.durable import write_atomically
from service.encoder import Encoder
from service.filters import Filter
from service.imaging import ImageError, decode_image
from service.index import Hit, SnapshotError, load_snapshot, peek_seq
from service.index_view import IndexView
from service.store import (
    DEFAULT_COLLECTION,
    ImageRecord,
    ModelMismatch,
    NewImage,
    Store,
    StoreUnavailable,
    UnknownCollection,
)

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "index.snapshot"
ACK_EVERY_S = 5.0


@contextmanager
def file_lock(path: Path) -> Iterator[bool]:
    """Try to hold an exclusive lock on `path`; yields whether it was taken."""
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def data_dir_id(data_dir: Path) -> str:
    """This data dir's stable name in the log's consumer list (its snapshot is a consumer)."""
    path = data_dir / "instance.id"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(uuid.uuid4().hex)
    return path.read_text().strip()


def check_model(store: Store, name: str, version: str) -> None:
    """Refuse a PostgreSQL store whose vectors another model made: every replica must serve one
    model. (SQLite galleries re-embed on start instead; their workers share one command.)"""
    recorded = store.model_version()
    if store.backend != "postgresql" or recorded in (None, version):
        return
    raise ModelMismatch(
        f"the database's vectors were made by model version {recorded[:12]}…, but this replica "
        f"serves {name} {version[:12]}…; all replicas must serve one model. To upgrade, stop "
        "every replica, run `python -m service reembed` once with the new LOOKALIKE_MODEL_DIR "
        "and this LOOKALIKE_DATABASE_URL, then start the replicas with the new model (README: "
        "Upgrading the model)"
    )


class Gallery:
    def __init__(self, store: Store, encoder: Encoder, settings: Settings) -> None:
        self._store = store
        self._encoder = encoder
        self._settings = settings
        self.version = encoder.info.version
        data_dir = Path(settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self._snapshot_path = data_dir / SNAPSHOT_FILE
        self._snapshot_lock = data_dir / ".snapshot.lock"
        self._snapshot_consumer = f"snapshot:{data_dir_id(data_dir)}"
        self._process_consumer = f"process:{uuid.uuid4().hex}"
        self._view = IndexView(store, encoder.info.dim, settings)
        self._snapshot_seq = 0
        self._acked_at = 0.0
        self._store_down = False  # set by a failed store call; cleared by the follower
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lifecycle = threading.Lock()  # close() waits for an open() in progress
        self._follower: threading.Thread | None = None

    def chore(self, name: str) -> AbstractContextManager[None]:
        """Hold a store-wide lock: one process at a time does the chore `name`."""
        return self._store.chore(name)

    # --- start-up and shutdown ----------------------------------------------------------------
    def open(self) -> None:
        """Bring the stored vectors to this model, load or build the index, start following.
        Returns early, unopened, once `close` has been called."""
        with self._lifecycle:
            self._store.migrate()
            check_model(self._store, self._encoder.info.name, self.version)
            if self._store.model_version() != self.version and not self.upgrade_model():
                return
            if self._stopping.is_set():
                return
            self._load_index()
            self._follower = threading.Thread(
                target=self._follow, name="index-follower", daemon=True
            )
            self._follower.start()

    def _load_index(self) -> None:
        try:
            indexes, seq = load_snapshot(
                self._snapshot_path, model_version=self.version, **self._view.options()
            )
            self._snapshot_seq = seq
        except SnapshotError as exc:
            log.warning("rebuilding the index from the store", extra={"why": str(exc)})
            indexes, seq = self._view.build()
        self._view.install(indexes, seq)
        self._ack()
        log.info(
            "index ready",
            extra={
                "vectors": self.indexed,
                "replayed": self._view.seq - seq,
                "collections": len(self._view.indexes),
            },
        )
        if self._view.seq > self._snapshot_seq or not self._snapshot_path.exists():
            self.snapshot()

    def upgrade_model(self) -> bool:
        """Re-embed what another model made, then record this model as the store's. One process
        does it while the others wait. False when `close` interrupted it."""
        with self._store.chore("reembed"):
            if self.reembed_stale() is None:
                return False
            self._store.set_model_version(self.version)
            return True

    def reembed_stale(self) -> int | None:
        """Re-embed every stored original whose vector another model made; how many, or None
        when `close` interrupted it (the rest is done at the next start)."""
        total = self._store.count_stale(self.version)
        if not total:
            return 0
        log.info("model changed: re-embedding stored originals", extra={"images": total})
        done, started = 0, time.monotonic()
        for records in self._store.stale(self.version):
            if self._stopping.is_set():
                return None
            updates, pixels = [], []
            for record in records:
                content = self._store.read_original(record.sha256)
                try:
                    if content is None:
                        raise OSError("its original is missing")
                    pixels.append(decode_image(content, self._encoder.info.spec))
                    updates.append(record)
                except (ImageError, OSError) as exc:
                    log.error("cannot re-embed %s: %s", record.id, exc)
            if pixels:
                vectors = self._encoder.embed_pixels(pixels)
                self._store.replace_vectors(list(zip(updates, vectors, strict=True)), self.version)
            done += len(records)
            log.info(
                "re-embedding",
                extra={"done": done, "total": total, "seconds": round(time.monotonic() - started)},
            )
        return done

    def close(self) -> None:
        """Stop following, write a final snapshot, and leave the log's consumer list. Waits for
        an `open` in progress to stop at its next step."""
        self._stopping.set()
        self._wake.set()
        with self._lifecycle:
            if self._follower is None:
                return  # never opened
            self._follower.join()
        try:
            self.snapshot()
            self._store.forget(self._process_consumer)
        except StoreUnavailable as exc:
            log.warning("closing without the store", extra={"why": str(exc)})

    # --- the follower: catching up and chores -------------------------------------------------
    def _follow(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._settings.follow_interval_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._view.catch_up(self._store.last_seq())
                if time.monotonic() - self._acked_at > ACK_EVERY_S:
                    self._ack()
                work = self._due_work()
                if work is not None:
                    work()
                    self._wake.set()  # then look again: more may have fallen due meanwhile
                if self._store_down:
                    log.info("the store is back")
                    self._store_down = False
            except StoreUnavailable as exc:
                self._went_down(exc)
            except Exception:
                log.exception("index follower failed; it goes on")

    def _ack(self) -> None:
        self._store.ack(self._process_consumer, self._view.seq)
        self._acked_at = time.monotonic()

    def _due_work(self) -> Callable[[], object] | None:
        for name, index in list(self._view.indexes.items()):
            if (
                index.kind != self._view.kind_for(index.count)
                or index.tombstone_share > self._settings.tombstone_rebuild_ratio
            ):
                return lambda: self._view.rebuild(name)
        if self._view.seq - self._snapshot_seq >= self._settings.snapshot_every_writes:
            return self.snapshot
        return None

    def snapshot(self) -> None:
        """Write this process's index as the data dir's snapshot, then prune the log below its
        consumers. Skipped while another process holds the snapshot lock, or when the snapshot
        on disk is less than `snapshot_every_writes` changes behind (workers share one)."""
        with file_lock(self._snapshot_lock) as mine:
            on_disk = peek_seq(self._snapshot_path)
            cadence = self._settings.snapshot_every_writes
            if not mine or (on_disk is not None and self._view.seq - on_disk < cadence):
                self._snapshot_seq = self._view.seq if on_disk is None else on_disk
                return
            content, seq = self._view.snapshot(self.version)
            write_atomically(self._snapshot_path, content)
            self._snapshot_seq = seq
        self._store.ack(self._snapshot_consumer, seq)
        self._store.prune_log(self._settings.log_retention_s)

    # --- collections --------------------------------------------------------------------------
    def collections(self) -> list[dict]:
        """Every collection: its name, image count and this process's index kind."""
        self._fresh()
        return [self._describe(name, count) for name, count in self._store.collections()]

    def collection(self, name: str) -> dict:
        self._require(name)
        return self._describe(name, self._store.count(name))

    def _describe(self, name: str, count: int) -> dict:
        index = self._view.indexes.get(name)
        kind = index.kind if index is not None else self._view.kind_for(0)
        return {"name": name, "count": count, "index_kind": kind}

    def create_collection(self, name: str) -> bool:
        """Create `name`; False when it exists already."""
        return self._store.create_collection(name)

    def drop_collection(self, name: str) -> bool:
        """Delete `name` and its images, in every process's index; False when unknown."""
        change = self._store.drop_collection(name)
        if change is None:
            return False
        self._caught_up_to(change.seq)
        return True

    def _require(self, name: str) -> None:
        if not self._store.has_collection(name):
            raise UnknownCollection(f"no collection named {name!r}")

    # --- writes -------------------------------------------------------------------------------
    def upsert(self, images: list[NewImage], *, collection: str = DEFAULT_COLLECTION) -> list[bool]:
        """Store and index; per image, whether it was created (False: replaced)."""
        results = self._store.upsert(images, self.version, collection)
        self._caught_up_to(max(change.seq for _, change in results))
        return [created for created, _ in results]

    def delete(self, image_id: str, *, collection: str = DEFAULT_COLLECTION) -> bool:
        change = self._store.delete(image_id, collection)
        if change is None:
            self._require(collection)
            return False
        self._caught_up_to(change.seq)
        return True

    def _caught_up_to(self, seq: int) -> None:
        """After a commit: index it now, so this process's next read needs no replay. A store
        failure here leaves it to the follower; the write itself has committed."""
        try:
            self._view.catch_up(seq)
        except StoreUnavailable as exc:
            self._went_down(exc)  # the write has committed: the follower indexes it later
        self._wake.set()

    # --- reads --------------------------------------------------------------------------------
    def _went_down(self, exc: StoreUnavailable) -> None:
        if not self._store_down:
            log.warning(
                "the store is unavailable; searching the index as it stands",
                extra={"why": str(exc)},
            )
        self._store_down = True

    def _fresh(self) -> int | None:
        """Bring the view up to the store's latest seq, and return it. While the store is down,
        reads use the index as it stands, without waiting on the store (None); the follower
        finds when it is back."""
        if self._store_down:
            return None
        try:
            store_seq = self._store.last_seq()
            self._view.catch_up(store_seq)
            return store_seq
        except StoreUnavailable as exc:
            self._went_down(exc)
            return None

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        collection: str = DEFAULT_COLLECTION,
        where: Filter | None = None,
    ) -> list[list[Hit]]:
        """Per query, the k nearest images of `collection` (among those matching `where`)."""
        self._fresh()
        if collection not in self._view.indexes and not self._store_down:
            self._require(collection)
        return self._view.search(collection, queries, k, where)

    def vector_of(
        self, image_id: str, *, collection: str = DEFAULT_COLLECTION
    ) -> np.ndarray | None:
        self._fresh()
        vector = self._view.vector_of(collection, image_id)
        if vector is None and not self._store_down:
            self._require(collection)
        return vector

    def get(self, image_id: str, *, collection: str = DEFAULT_COLLECTION) -> ImageRecord | None:
        record = self._store.get(image_id, collection)
        if record is None:
            self._require(collection)
        return record

    def content(
        self, image_id: str, *, collection: str = DEFAULT_COLLECTION
    ) -> tuple[ImageRecord, bytes] | None:
        record = self.get(image_id, collection=collection)
        if record is None:
            return None
        content = self._store.read_original(record.sha256)
        return None if content is None else (record, content)

    def page(
        self,
        *,
        after: int,
        limit: int,
        collection: str = DEFAULT_COLLECTION,
        where: Filter | None = None,
    ) -> tuple[list[ImageRecord], int | None]:
        """A page of `collection`'s records after a cursor, and the next cursor (None at the
        end). Unfiltered: in upload order, the cursor a row key. Filtered: the matches come from
        this process's index, in order of their last change, the cursor a seq."""
        if where is None:
            records, cursor = self._store.page(after_key=after, limit=limit, collection=collection)
        else:
            self._fresh()
            seqs = self._view.matching(collection, where)
            seqs = seqs[np.searchsorted(seqs, after, side="right") :][: limit + 1]
            records = self._store.by_seq(seqs[:limit].tolist())
            cursor = int(seqs[limit - 1]) if len(seqs) > limit else None
        if not records:
            self._require(collection)
        return records, cursor

    def count(self, collection: str | None = None) -> int:
        return self._store.count(collection)

    @property
    def indexed(self) -> int:
        return sum(index.count for index in list(self._view.indexes.values()))

    @property
    def unreadable(self) -> int:
        """Stored images left out of search because their metadata cannot be read."""
        return sum(index.unreadable for index in list(self._view.indexes.values()))

    def status(self) -> dict:
        store_seq = self._fresh()
        indexes = list(self._view.indexes.values())
        status = {
            "worker": os.getpid(),
            "indexed": sum(index.count for index in indexes),
            "index_kind": self._describe(DEFAULT_COLLECTION, 0)["index_kind"],
            "index_tombstones": sum(index.tombstones for index in indexes),
            "index_unreadable": sum(index.unreadable for index in indexes),
            "index_seq": self._view.seq,
            "collections": len(indexes),
            "store": self._store.backend,
        }
        try:
            if store_seq is not None:
                return status | {"images": self._store.count(), "store_seq": store_seq}
        except StoreUnavailable:
            pass
        return status | {"store_available": False}
