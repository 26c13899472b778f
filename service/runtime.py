"""What one running worker holds, in one typed object that the app's lifespan builds once the
worker is ready (its index loaded).

Routes reach it through `routes.deps.get_runtime`; tests substitute parts of it with
`app.dependency_overrides[get_runtime]`.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.batcher import MicroBatcher
from service.config import Settings
from service.encoder import Encoder
from service.gallery import Gallery
from service.keys import Keyring
from service.metrics import Metrics


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics
    encoder: Encoder
    batcher: MicroBatcher
    gallery: Gallery
    keys: Keyring
