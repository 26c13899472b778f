"""Building a kept model's vectors in the background, from the stored originals, while another
model serves (models.py; `python -m service model add`).

Every process runs a `VectorBuilder` thread; one at a time does the work (the store's chore
"model-vectors", taken without waiting: the others try again every few seconds, and find
nothing left once it is done). The work:
- **Resumes by itself.** What is left is the rows without a vector of that model
  (`store.missing_vectors`), so a crash or a restart loses nothing but the batch in flight.
- **Never doubles a row.** `add_vectors` inserts once per (model, row version), and only for a row
  still at the version that was read: one changed meanwhile already brought its own vector.
- **Leaves room for serving.** After each batch it sleeps four times as long as the batch took,
  so it uses a fifth of one core.
- **An original that cannot be decoded** gets a zero vector, logged: the image stays listed and
  readable under the new model, and no query finds it by similarity (as no model could).

Once a model has every vector, it keeps them: every write brings a vector of every kept model.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from service.imaging import ImageError, decode_image
from service.models import ModelSet
from service.store import Store, StoreUnavailable

log = logging.getLogger(__name__)

CHORE = "model-vectors"
POLL_S = 2.0
BATCH = 64
REST = 4.0  # seconds of sleep per second of work: a fifth of one core


class VectorBuilder:
    def __init__(self, store: Store, models: ModelSet, stopping: threading.Event) -> None:
        self._store = store
        self._models = models
        self._stopping = stopping
        self._complete: set[str] = set()  # kept models with every vector: they stay complete
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-vectors", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stopping.wait(POLL_S):
            try:
                kept = self._models.refresh()
                self._complete &= set(kept)  # a model removed and kept again builds again
                todo = [v for v in kept if v not in self._complete]
                if todo:
                    with self._store.try_chore(CHORE) as mine:  # else another process builds
                        for version in todo if mine else []:
                            if self.build(version):
                                self._complete.add(version)
            except StoreUnavailable as exc:
                log.warning("building model vectors waits for the store", extra={"why": str(exc)})
            except Exception:
                log.exception("building model vectors failed; it goes on")

    def build(self, version: str) -> bool:
        """Fill `version`'s missing vectors; whether it has them all (False: stopping)."""
        if version == self._store.model_version():
            return True  # the serving model has every vector (no count over the gallery)
        total = self._store.count_missing(version)
        if not total:
            return True
        encoder = self._models.encoder(version)
        log.info("building a kept model's vectors", extra={"model": version, "images": total})
        done, started = 0, time.monotonic()
        for records in self._store.missing_vectors(version, batch=BATCH):
            if self._stopping.is_set():
                return False
            began = time.monotonic()
            pixels: list[np.ndarray | None] = []
            for record in records:
                content = self._store.read_original(record.sha256)
                try:
                    if content is None:
                        raise ImageError("its original is missing")
                    pixels.append(decode_image(content, encoder.info.spec))
                except ImageError as exc:
                    log.error("image %r gets a zero vector: %s", record.id, exc)
                    pixels.append(None)
            vectors = np.zeros((len(records), encoder.info.dim), np.float32)
            readable = [i for i, p in enumerate(pixels) if p is not None]
            if readable:
                vectors[readable] = encoder.embed_pixels([p for p in pixels if p is not None])
            self._store.add_vectors(version, list(zip(records, vectors, strict=True)))
            done += len(records)
            log.info(
                "building a kept model's vectors",
                extra={
                    "model": version,
                    "done": done,
                    "total": total,
                    "seconds": round(time.monotonic() - started),
                },
            )
            self._stopping.wait(REST * (time.monotonic() - began))
        return not self._store.count_missing(version)
