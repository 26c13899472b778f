"""Vectors made by another model, in a store from before it kept its models (models.py):
refused on a PostgreSQL store this replica would share with replicas of another model,
re-embedded from the stored originals otherwise.

SQLite galleries re-embed on start (one process does it while the others wait); PostgreSQL ones
with `python -m service reembed`, all replicas stopped. A store that keeps its models switches
with no downtime instead (`python -m service model`).
"""

from __future__ import annotations

import logging
import threading
import time

from service.encoder import Encoder
from service.imaging import ImageError, decode_image
from service.store import ModelMismatch, Store

log = logging.getLogger(__name__)


def check_model(store: Store, name: str, version: str) -> None:
    """Refuse a PostgreSQL store whose vectors another model made: every replica must serve one
    model. (SQLite galleries re-embed on start instead; their workers share one command.)"""
    recorded = store.model_version()
    if store.backend != "postgresql" or recorded in (None, version) or store.kept_models():
        return  # a store that keeps its models serves its own (models.py), whatever MODEL_DIR
    raise ModelMismatch(
        f"the database's vectors were made by model version {recorded[:12]}…, but this replica "
        f"serves {name} {version[:12]}…; all replicas must serve one model. To upgrade, stop "
        "every replica, run `python -m service reembed` once with the new LOOKALIKE_MODEL_DIR "
        "and this LOOKALIKE_DATABASE_URL, then start the replicas with the new model (README: "
        "Scaling out, One model for all)"
    )


def upgrade_model(store: Store, encoder: Encoder, stopping: threading.Event | None = None) -> bool:
    """Re-embed what another model made, then record this model as the store's. One process
    does it while the others wait. False when `stopping` interrupted it."""
    with store.chore("reembed"):
        if reembed_stale(store, encoder, stopping or threading.Event()) is None:
            return False
        store.set_model_version(encoder.info.version)
        return True


def reembed_stale(store: Store, encoder: Encoder, stopping: threading.Event) -> int | None:
    """Re-embed every stored original whose vector another model made; how many, or None when
    `stopping` interrupted it (the rest is done at the next start)."""
    version = encoder.info.version
    total = store.count_stale(version)
    if not total:
        return 0
    log.info("model changed: re-embedding stored originals", extra={"images": total})
    done, started = 0, time.monotonic()
    for records in store.stale(version):
        if stopping.is_set():
            return None
        updates, pixels = [], []
        for record in records:
            content = store.read_original(record.sha256)
            try:
                if content is None:
                    raise OSError("its original is missing")
                pixels.append(decode_image(content, encoder.info.spec))
                updates.append(record)
            except (ImageError, OSError) as exc:
                log.error("cannot re-embed %s: %s", record.id, exc)
        if pixels:
            vectors = encoder.embed_pixels(pixels)
            store.replace_vectors(list(zip(updates, vectors, strict=True)), version)
        done += len(records)
        log.info(
            "re-embedding",
            extra={"done": done, "total": total, "seconds": round(time.monotonic() - started)},
        )
    return done
