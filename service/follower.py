"""The follower: keeps this process's index view in step with the store's change log, and does
the chores that keep the log short.

- **Catching up.** A thread brings the view up to the store's latest seq at least every
  `follow_interval_s` (reads and writes also catch up on their own; see gallery.py), and
  reports this process's position to the log (its consumer entry).
- **The store going away.** A failed store call marks the store down: reads then answer from the
  view as it stands, without waiting on the store, until the thread finds it back.
- **Chores.** Rebuilds, when an index's size calls for another kind or its tombstones pass their
  share; snapshots of the view, one writer per data dir (a file lock) and only every
  `snapshot_every_writes` changes, each followed by pruning the log below its consumers.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from service.config import Settings
from service.durable import write_atomically
from service.index import peek_seq
from service.index_view import IndexView
from service.store import Store, StoreUnavailable

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


class Follower:
    def __init__(
        self, store: Store, view: IndexView, settings: Settings, model_version: str
    ) -> None:
        self._store = store
        self._view = view
        self._settings = settings
        self._model_version = model_version
        data_dir = Path(settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self._snapshot_path = data_dir / SNAPSHOT_FILE
        self._snapshot_lock = data_dir / ".snapshot.lock"
        self._snapshot_consumer = f"snapshot:{data_dir_id(data_dir)}"
        self._process_consumer = f"process:{uuid.uuid4().hex}"
        self._snapshot_seq = 0
        self._acked_at = 0.0
        self.store_down = False  # set by a failed store call; cleared by the thread
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # --- start and stop -----------------------------------------------------------------------
    def start(self) -> None:
        """Load the view (from the snapshot, or built from the rows), then follow the log."""
        covered = self._view.open(self._snapshot_path, self._model_version)
        self._snapshot_seq = covered or 0
        self._ack()
        if self._view.seq > self._snapshot_seq or not self._snapshot_path.exists():
            self.snapshot()
        self._thread = threading.Thread(target=self._run, name="index-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread (and a start-up in progress) to stop."""
        self.stopping.set()
        self._wake.set()

    def finish(self) -> None:
        """After `stop`: wait for the thread, write a final snapshot, leave the consumer list."""
        if self._thread is None:
            return  # never started
        self._thread.join()
        try:
            self.snapshot()
            self._store.forget(self._process_consumer)
        except StoreUnavailable as exc:
            log.warning("closing without the store", extra={"why": str(exc)})

    # --- catching up --------------------------------------------------------------------------
    def fresh(self) -> int | None:
        """Bring the view up to the store's latest seq, and return it. While the store is down,
        reads use the index as it stands, without waiting on the store (None); the thread finds
        when it is back."""
        if self.store_down:
            return None
        try:
            store_seq = self._store.last_seq()
            self._view.catch_up(store_seq)
            return store_seq
        except StoreUnavailable as exc:
            self.went_down(exc)
            return None

    def caught_up_to(self, seq: int) -> None:
        """After a commit: index it now, so this process's next read needs no replay. A store
        failure here leaves it to the thread; the write itself has committed."""
        try:
            self._view.catch_up(seq)
        except StoreUnavailable as exc:
            self.went_down(exc)
        self._wake.set()

    def went_down(self, exc: StoreUnavailable) -> None:
        if not self.store_down:
            log.warning(
                "the store is unavailable; searching the index as it stands",
                extra={"why": str(exc)},
            )
        self.store_down = True

    def _run(self) -> None:
        while not self.stopping.is_set():
            self._wake.wait(self._settings.follow_interval_s)
            self._wake.clear()
            if self.stopping.is_set():
                return
            try:
                self._view.catch_up(self._store.last_seq())
                if time.monotonic() - self._acked_at > ACK_EVERY_S:
                    self._ack()
                work = self._due_work()
                if work is not None:
                    work()
                    self._wake.set()  # then look again: more may have fallen due meanwhile
                if self.store_down:
                    log.info("the store is back")
                    self.store_down = False
            except StoreUnavailable as exc:
                self.went_down(exc)
            except Exception:
                log.exception("index follower failed; it goes on")

    def _ack(self) -> None:
        self._store.ack(self._process_consumer, self._view.seq)
        self._acked_at = time.monotonic()

    # --- chores -------------------------------------------------------------------------------
    def _due_work(self) -> Callable[[], object] | None:
        collection = self._view.due_for_rebuild()
        if collection is not None:
            return lambda: self._view.rebuild(collection)
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
            content, seq = self._view.snapshot(self._model_version)
            write_atomically(self._snapshot_path, content)
            self._snapshot_seq = seq
        self._store.ack(self._snapshot_consumer, seq)
        self._store.prune_log(self._settings.log_retention_s)
