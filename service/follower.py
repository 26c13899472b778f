"""The follower: keeps this process's index view in step with the store's change log, and does
the chores that keep the log short.

- **Catching up.** A thread brings the view up to the store's latest seq at least every
  `follow_interval_s` (reads and writes also catch up on their own; see gallery.py), and
  reports this process's position to the log (its consumer entry).
- **The store going away.** A failed store call marks the store down: reads then answer from the
  view as it stands, without waiting on the store, until the thread finds it back.
- **The serving model** (models.py). A `model` log entry names the model to serve. Whichever
  catch-up applies it, this thread then builds a view of that model's vectors (mapping its
  generation, or writing one from the store) while the old view serves, and swaps the two:
  `view` is always one model's, and requests take it once (gallery.py).
- **Generations** (generation.py). When a collection's delta holds `compact_after_changes`
  changes or `compact_after_share` of its size (at least 1,000), or its size calls for another
  index kind, the one process that takes the writer's
  lock writes the next generation from its view; every process switches to a newer generation at
  its next round. Each writes is followed by pruning the log below its consumers (this data
  dir's newest generation is one, each process another).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from service.compaction import Compaction, compact
from service.config import Settings
from service.index_view import IndexView
from service.store import Store, StoreUnavailable

log = logging.getLogger(__name__)

ACK_EVERY_S = 5.0


def data_dir_id(data_dir: Path) -> str:
    """This data dir's stable name in the log's consumer list (its generations are a consumer)."""
    data_dir.mkdir(parents=True, exist_ok=True)
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
        self, store: Store, settings: Settings, view_of: Callable[[str], IndexView]
    ) -> None:
        self._store = store
        self._view_of = view_of  # a new (unloaded) view of a model's vectors
        self.view: IndexView | None = None  # set by start; replaced whole by a model switch
        self._settings = settings
        self._generation_consumer = f"generation:{data_dir_id(Path(settings.data_dir))}"
        self._process_consumer = f"process:{uuid.uuid4().hex}"
        self._acked_at = 0.0
        self.store_down = False  # set by a failed store call; cleared by the thread
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # --- start and stop -----------------------------------------------------------------------
    def start(self, model_version: str) -> None:
        """Map the newest generation of the model's vectors (or write one), catch up, then
        follow the log."""
        view = self._view_of(model_version)
        view.load()
        self.view = view
        self._ack()
        self._thread = threading.Thread(target=self._run, name="index-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread (and a start-up in progress) to stop."""
        self.stopping.set()
        self._wake.set()

    def finish(self) -> None:
        """After `stop`: wait for the thread, leave the consumer list, unmap the generation."""
        if self._thread is None:
            return  # never started
        self._thread.join()
        try:
            self._store.forget(self._process_consumer)
        except StoreUnavailable as exc:
            log.warning("closing without the store", extra={"why": str(exc)})
        self._live.release()

    @property
    def _live(self) -> IndexView:
        assert self.view is not None, "the follower has not started"
        return self.view

    # --- catching up --------------------------------------------------------------------------
    def fresh(self) -> int | None:
        """Bring the view up to the store's latest seq, and return it. While the store is down,
        reads use the index as it stands, without waiting on the store (None); the thread finds
        when it is back."""
        if self.store_down:
            return None
        try:
            store_seq = self._store.last_seq()
            view = self._live
            view.catch_up(store_seq)
            if view.activated not in (None, view.model_version):
                self._wake.set()  # the thread switches models
            return store_seq
        except StoreUnavailable as exc:
            self.went_down(exc)
            return None

    def caught_up_to(self, seq: int) -> None:
        """After a commit: index it now, so this process's next read needs no replay. A store
        failure here leaves it to the thread; the write itself has committed."""
        try:
            self._live.catch_up(seq)
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
                if self._live.switch_if_newer():
                    self._retire()
                self._live.catch_up(self._store.last_seq())
                target = self._live.activated
                if target is not None and target != self._live.model_version:
                    self._serve(target)
                if time.monotonic() - self._acked_at > ACK_EVERY_S:
                    self._ack()
                settings = self._settings
                if self._live.due_for_compaction(
                    settings.compact_after_changes, settings.compact_after_share
                ):
                    self.compact()
                if self.store_down:
                    log.info("the store is back")
                    self.store_down = False
            except StoreUnavailable as exc:
                self.went_down(exc)
            except Exception:
                log.exception("index follower failed; it goes on")

    def _ack(self) -> None:
        """Tell the log how far this process and the generation it maps have got."""
        self._store.ack(self._process_consumer, self._live.seq)
        if self._live.generation is not None:
            self._store.ack(self._generation_consumer, self._live.generation.seq)
        self._acked_at = time.monotonic()

    def _serve(self, model_version: str) -> None:
        """Build a view of another model's vectors beside the live one, then swap them."""
        started = time.monotonic()
        view = self._view_of(model_version)
        view.load()
        old, self.view = self._live, view
        old.release()
        self._ack()
        log.info(
            "serving another model",
            extra={
                "model": model_version,
                "from": old.model_version,
                "seconds": round(time.monotonic() - started, 2),
            },
        )

    # --- chores -------------------------------------------------------------------------------
    def compact(self) -> None:
        """Write the next generation from this view (in a child process: compaction.py), switch
        to it, and prune the log. Skipped while another process writes one, or when a newer one
        than this view's is there (the next round switches to it)."""
        current = self._live.generation
        if current is None or self._live.generations.current() != current.name:
            return
        started = time.monotonic()
        seq, states = self._live.compaction_states()
        generations = self._live.generations
        job = Compaction(
            data_dir=generations.data_dir,
            dim=generations.dim,
            options=generations.options,
            model_version=generations.model_version,
            log_level=self._settings.log_level,
            newest=current.name,
            seq=seq,
            states=states,
        )
        if not compact(job):
            return
        log.info(
            "index generation written",
            extra={"seq": seq, "seconds": round(time.monotonic() - started, 2)},
        )
        self._live.switch_if_newer()
        self._retire()
        self._ack()
        self._store.prune_log(self._settings.log_retention_s)

    def _retire(self) -> None:
        with self._live.generations.writing(wait=False) as mine:
            if mine:
                self._live.generations.retire()
