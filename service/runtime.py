"""What one running worker holds, in one typed object that the app's lifespan builds once the
worker is ready (its index loaded).

Routes reach it through `routes.deps.get_runtime`; tests substitute parts of it with
`app.dependency_overrides[get_runtime]`. A request takes the serving model once (`serving`):
its encoder, its batcher, and the version its searches name (gallery.py's ModelSwitched).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from service.batcher import MicroBatcher
from service.config import Settings
from service.encoder import Encoder, ModelInfo
from service.gallery import Gallery
from service.inputs import NamedImage, decode_all
from service.keys import Keyring
from service.metrics import Metrics
from service.models import ModelSet, ModelSwitched
from service.store.base import ModelsChanged

T = TypeVar("T")
TRIES = 2  # a request meets a model switch at most once in practice; twice is a 503


@dataclass(frozen=True)
class Serving:
    """The model a request embeds with, taken once."""

    encoder: Encoder
    batcher: MicroBatcher

    @property
    def info(self) -> ModelInfo:
        return self.encoder.info

    @property
    def version(self) -> str:
        return self.encoder.info.version


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics
    models: ModelSet
    gallery: Gallery
    keys: Keyring

    def serving(self) -> Serving:
        """The model this worker serves now (on the event loop)."""
        version = self.gallery.serving
        return Serving(self.models.encoder(version), self.models.batcher(version))


async def with_serving_model(
    runtime: Runtime, work: Callable[[Serving], Awaitable[T]]
) -> tuple[Serving, T]:
    """`work` under the serving model, and once more if the model switched under it
    (ModelSwitched), or a write lacked the vector of a model kept meanwhile (ModelsChanged:
    the kept models are loaded first)."""
    for attempt in range(TRIES):
        serving = runtime.serving()
        try:
            return serving, await work(serving)
        except (ModelSwitched, ModelsChanged) as exc:
            if attempt == TRIES - 1:
                raise
            if isinstance(exc, ModelsChanged):
                await asyncio.to_thread(runtime.models.refresh)
    raise AssertionError("unreachable")  # the last attempt returns or raises


async def embed_everywhere(runtime: Runtime, images: list[NamedImage]) -> dict[str, np.ndarray]:
    """Every loaded model's vectors of these images (decoded once per input spec), for a
    write: the store keeps a vector of each."""
    settings, models = runtime.settings, runtime.models
    versions = models.loaded
    specs = list({models.encoder(version).info.spec for version in versions})
    decoded = await asyncio.gather(
        *(
            decode_all(
                images,
                spec,
                max_pixels=settings.max_pixels,
                max_request_pixels=settings.max_pixels_per_request,
            )
            for spec in specs
        )
    )
    pixels = dict(zip(specs, decoded, strict=True))  # decoded once per input spec, not per model
    vectors = await asyncio.gather(
        *(models.batcher(v).embed(pixels[models.encoder(v).info.spec]) for v in versions)
    )
    return dict(zip(versions, vectors, strict=True))
