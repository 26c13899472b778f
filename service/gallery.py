"""The gallery: the store (truth) and the index (derived), kept in step.

Writes are serialised under the index's write lock: commit to the store first, then apply the
change to the index. A crash between the two loses nothing, because on start the index snapshot
is loaded and every newer store change is replayed; a missing or corrupt snapshot is rebuilt from
the store. Searches take the read lock and run concurrently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.config import Settings
from service.durable import write_atomically
from service.encoder import Encoder
from service.imaging import ImageError, decode_image
from service.index import SnapshotError, VectorIndex
from service.store import Change, ImageRecord, NewImage, Store

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "index.snapshot"


@dataclass(frozen=True)
class Hit:
    record: ImageRecord
    score: float


class Gallery:
    def __init__(self, store: Store, encoder: Encoder, settings: Settings) -> None:
        self.store = store
        self.encoder = encoder
        self.settings = settings
        self.version = encoder.info.version
        self.snapshot_path = Path(settings.data_dir) / SNAPSHOT_FILE
        self.index = self._new_index(self._kind_for(store.count()))
        self._snapshot_seq = 0
        self._writing = threading.Lock()  # serialises writes and the swap of a rebuilt index
        self._snapshotting = threading.Lock()
        self._background: threading.Thread | None = None  # set while maintenance runs
        self._maintenance = threading.Lock()  # guards starting `_background`

    # --- start-up --------------------------------------------------------------------------
    def open(self) -> None:
        """Re-embed stale vectors if the model changed, then load or rebuild the index."""
        self.reembed_stale()
        try:
            index = VectorIndex.load(
                self.snapshot_path, model_version=self.version, **self._index_options()
            )
            log.info("loaded index snapshot", extra={"seq": index.seq, "vectors": index.count})
        except SnapshotError as exc:
            if self.snapshot_path.exists():
                log.warning("index snapshot unusable, rebuilding from the store: %s", exc)
            index = self._build(self._kind_for(self.store.count()))
        replayed = self.store.changes_since(index.seq)
        with index.lock.write():
            for change in replayed:
                index.apply(change.seq, change.old_seq, change.vector)
        self.index = index
        self._snapshot_seq = index.seq
        log.info(
            "index ready",
            extra={"vectors": index.count, "replayed": len(replayed), "kind": index.kind},
        )
        if replayed or not self.snapshot_path.exists():
            self.snapshot()

    def reembed_stale(self) -> None:
        total = self.store.count_stale(self.version)
        if not total:
            return
        log.info("model changed: re-embedding stored originals", extra={"images": total})
        done, started = 0, time.monotonic()
        for records in self.store.stale(self.version):
            updates, pixels = [], []
            for record in records:
                try:
                    pixels.append(
                        decode_image(self.store.read_original(record), self.encoder.info.spec)
                    )
                    updates.append(record.id)
                except (ImageError, OSError) as exc:
                    log.error("cannot re-embed %s: %s", record.id, exc)
            if pixels:
                vectors = self.encoder.embed_pixels(pixels)
                self.store.set_vectors(list(zip(updates, vectors, strict=True)), self.version)
            done += len(records)
            log.info(
                "re-embedding",
                extra={
                    "done": done,
                    "total": total,
                    "seconds": round(time.monotonic() - started, 1),
                },
            )
        self.snapshot_path.unlink(missing_ok=True)  # its vectors are the old model's

    # --- index building --------------------------------------------------------------------
    def _index_options(self) -> dict:
        s = self.settings
        return {
            "hnsw_m": s.hnsw_m,
            "ef_construction": s.hnsw_ef_construction,
            "ef_search": s.hnsw_ef_search,
        }

    def _kind_for(self, count: int) -> str:
        if self.settings.index_kind != "auto":
            return self.settings.index_kind
        return "hnsw" if count >= self.settings.approximate_index_min_vectors else "flat"

    def _new_index(self, kind: str) -> VectorIndex:
        return VectorIndex(self.encoder.info.dim, kind, **self._index_options())

    def _build(self, kind: str) -> VectorIndex:
        """A fresh index of every stored vector up to the store's current seq."""
        upto = self.store.last_seq()
        index = self._new_index(kind)
        for seqs, vectors in self.store.vectors(max_seq=upto):
            index.add(seqs, vectors)
        index.seq = upto
        return index

    def rebuild(self) -> None:
        """Build a new index beside the live one, catch it up, and swap it in."""
        started = time.monotonic()
        fresh = self._build(self._kind_for(self.store.count()))
        with self._writing:  # fresh is not visible yet: catching it up needs no index lock
            for change in self.store.changes_since(fresh.seq):
                fresh.apply(change.seq, change.old_seq, change.vector)
            old, self.index = self.index, fresh
        log.info(
            "index rebuilt",
            extra={
                "kind": fresh.kind,
                "vectors": fresh.count,
                "was": old.kind,
                "seconds": round(time.monotonic() - started, 1),
            },
        )
        self.snapshot()

    def snapshot(self) -> None:
        with self._snapshotting:  # background snapshots, rebuilds and shutdown may overlap
            index = self.index
            with index.lock.read():
                content = index.snapshot_bytes(model_version=self.version)
                seq = index.seq
            write_atomically(self.snapshot_path, content)
            self.store.prune_changes(seq)
            self._snapshot_seq = seq

    def _after_write(self) -> None:
        with self._maintenance:
            if self._background is not None:
                return  # the running thread checks again when its work is done
            work = self._due_work()
            if work is None:
                return
            self._background = threading.Thread(
                target=self._maintain, args=(work,), name="index-maintenance", daemon=True
            )
            self._background.start()

    def _due_work(self) -> Callable[[], None] | None:
        index = self.index
        due_snapshot = index.seq - self._snapshot_seq >= self.settings.snapshot_every_writes
        wrong_kind = index.kind != self._kind_for(index.count)
        too_many_tombstones = index.tombstone_share > self.settings.tombstone_rebuild_ratio
        if not (wrong_kind or too_many_tombstones or due_snapshot):
            return None
        if due_snapshot:
            self._snapshot_seq = index.seq  # claim it, so only one snapshot starts
        return self.rebuild if wrong_kind or too_many_tombstones else self.snapshot

    def _maintain(self, work: Callable[[], None] | None) -> None:
        """Run maintenance, then whatever fell due meanwhile (the gallery may have crossed the
        HNSW size during a snapshot, with no further write to notice it)."""
        try:
            while work is not None:
                work()
                with self._maintenance:
                    work = self._due_work()
                    if work is None:
                        self._background = None
        except BaseException:
            with self._maintenance:
                self._background = None
            raise

    def close(self) -> None:
        """Let background maintenance finish, then write a final snapshot."""
        background = self._background
        if background is not None:
            background.join()
        self.snapshot()

    # --- writes ----------------------------------------------------------------------------
    def _commit(self, write) -> list[Change]:
        with self._writing:
            changes = write()
            index = self.index
            with index.lock.write():
                for change in changes:
                    index.apply(change.seq, change.old_seq, change.vector)
        self._after_write()
        return changes

    def upsert(self, images: list[NewImage]) -> list[bool]:
        """Store and index; per image, whether it was created (False: replaced)."""
        created: list[bool] = []

        def write() -> list[Change]:
            results = self.store.upsert(images, self.version)
            created.extend(c for c, _ in results)
            return [change for _, change in results]

        self._commit(write)
        return created

    def delete(self, image_id: str) -> bool:
        def write() -> list[Change]:
            change = self.store.delete(image_id)
            return [change] if change else []

        return bool(self._commit(write))

    # --- reads -----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        index = self.index
        with index.lock.read():
            found = index.search(queries, k)
        records = self.store.by_seq([label for hits in found for label, _ in hits])
        return [
            [Hit(records[label], score) for label, score in hits if label in records]
            for hits in found
        ]

    def status(self) -> dict:
        return {
            "images": self.store.count(),
            "indexed": self.index.count,
            "index_kind": self.index.kind,
            "index_seq": self.index.seq,
            "store_seq": self.store.last_seq(),
        }
