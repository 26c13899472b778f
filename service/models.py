"""The models one process embeds with: every model the store keeps, each loaded from the store's
own copy of its files, with a micro-batcher of its own.

- **The store is the truth.** `seed_models` hands a store that keeps no model the artifact in
  `MODEL_DIR` (after today's start-up path has brought the stored vectors to it); from then on
  the store's serving model (`store.model_version()`) is what answers, whatever `MODEL_DIR`
  says, and `python -m service model add / activate` changes it (model_cli.py).
- **Files.** A kept model's `encoder.onnx` and `model.json` are written once to
  `DATA_DIR/models/<version>/` (atomically) and loaded from there: the bytes come from the
  database once per data dir, not at every start of every worker.
- **Batchers** start on the event loop the first time a request needs one (`batcher`); encoders
  load off it (`refresh`: at open, every few seconds in the vector builder's thread, and through
  `asyncio.to_thread` when a write meets a model kept since).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import numpy as np

from service.batcher import MicroBatcher
from service.config import Settings
from service.durable import write_atomically
from service.encoder import ArtifactError, Encoder, load_encoder
from service.imaging import decode_image
from service.metrics import Metrics
from service.store import NewImage, Store
from service.store.base import ModelArtifact

log = logging.getLogger(__name__)

FILES = ("model.json", "encoder.onnx")


class ModelSwitched(RuntimeError):
    """The serving model changed after the caller embedded with the one before: embed again."""


def new_images(
    items: list[tuple[str, bytes, str, dict]], vectors: dict[str, np.ndarray], serving: str
) -> list[NewImage]:
    """(id, content, format, metadata) with every model's vector: the serving model's as the
    row's own, the others' beside it."""
    return [
        NewImage(
            image_id,
            content,
            fmt,
            metadata,
            vectors[serving][i],
            {version: v[i] for version, v in vectors.items() if version != serving},
        )
        for i, (image_id, content, fmt, metadata) in enumerate(items)
    ]


def read_artifact(model_dir: Path, encoder: Encoder | None = None) -> ModelArtifact:
    """A model folder as the store keeps it; ArtifactError when it does not load. `encoder`:
    the folder's, loaded already."""
    info = (encoder or load_encoder(model_dir)).info  # loading refuses a broken artifact
    return ModelArtifact(
        info.version,
        info.name,
        info.dim,
        (model_dir / "model.json").read_text(),
        (model_dir / "encoder.onnx").read_bytes(),
    )


def seed_models(store: Store, seed: Encoder, model_dir: Path) -> str:
    """The serving model's version. A store that keeps no model yet keeps MODEL_DIR's (`seed`,
    loaded from it; its vectors were brought to it by the start-up path); one that does keeps
    serving its own."""
    serving = store.model_version()
    if serving is None or serving not in store.kept_models():  # nothing served from it yet
        store.add_model(read_artifact(model_dir, seed))
        store.set_model_version(seed.info.version)
        return seed.info.version
    if seed.info.version != serving:
        log.warning(
            "LOOKALIKE_MODEL_DIR is not the model the store serves; serving the store's "
            "(python -m service model list; model add and model activate switch it)",
            extra={"model_dir": str(model_dir), "serving": serving},
        )
    return serving


class ModelSet:
    def __init__(self, store: Store, settings: Settings, metrics: Metrics) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._folder = Path(settings.data_dir) / "models"
        self._encoders: dict[str, Encoder] = {}
        self._batchers: dict[str, MicroBatcher] = {}
        self._loading = threading.Lock()

    # --- encoders (blocking) --------------------------------------------------------------------
    def refresh(self) -> list[str]:
        """Load every kept model not loaded yet (and forget removed ones); the kept versions."""
        kept = self._store.kept_models()
        for version in kept:
            self.encoder(version)
        for version in set(self._encoders) - set(kept):
            self._encoders.pop(version, None)
        return kept

    def adopt(self, encoder: Encoder) -> None:
        """Use an encoder loaded already (MODEL_DIR's) for its version, rather than load the
        same model a second time from the store's copy."""
        with self._loading:
            self._encoders.setdefault(encoder.info.version, encoder)

    def encoder(self, version: str) -> Encoder:
        """The kept model `version`, loaded once (from its files, written from the store)."""
        encoder = self._encoders.get(version)
        if encoder is not None:
            return encoder
        with self._loading:
            if version not in self._encoders:
                self._encoders[version] = self._load(version)
            return self._encoders[version]

    def _load(self, version: str) -> Encoder:
        folder = self._folder / version
        if not all((folder / name).is_file() for name in FILES):
            artifact = self._store.model_artifact(version)
            if artifact is None:
                raise ArtifactError(f"the store keeps no model {version}")
            if hashlib.sha256(artifact.onnx).hexdigest() != version:
                raise ArtifactError(f"the store's copy of model {version} is damaged")
            folder.mkdir(parents=True, exist_ok=True)
            write_atomically(folder / "encoder.onnx", artifact.onnx)
            write_atomically(folder / "model.json", artifact.model_json.encode())
        encoder = load_encoder(folder, threads=self._settings.inference_threads)
        log.info("model loaded", extra={"model": encoder.info.name, "version": version})
        return encoder

    @property
    def loaded(self) -> list[str]:
        return list(self._encoders)

    def embed_blocking(self, contents: list[bytes]) -> dict[str, np.ndarray]:
        """Each loaded model's vectors of these image files (decoded for each model's input),
        in this thread: for writers off the event loop (the demo gallery)."""
        encoders = list(self._encoders.items())
        pixels = {
            spec: [decode_image(c, spec) for c in contents]
            for spec in {encoder.info.spec for _, encoder in encoders}
        }  # decoded once per input spec, not per model
        return {
            version: encoder.embed_pixels(pixels[encoder.info.spec])
            for version, encoder in encoders
        }

    # --- batchers (on the event loop) -------------------------------------------------------------
    def batcher(self, version: str) -> MicroBatcher:
        """`version`'s batcher, started on the running loop at first use; its encoder must be
        loaded already (`refresh`)."""
        batcher = self._batchers.get(version)
        if batcher is None:
            settings = self._settings
            batcher = self._batchers[version] = MicroBatcher(
                self._encoders[version].embed_pixels,
                max_batch=settings.batch_size,
                max_wait_s=settings.batch_wait_ms / 1000,
                max_queued=settings.queue_max_images,
                enabled=settings.micro_batching,
                metrics=self._metrics,
            )
            batcher.start()
        return batcher

    async def stop(self) -> None:
        for batcher in self._batchers.values():
            await batcher.stop()
