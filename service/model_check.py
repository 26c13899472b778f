"""Does a new model find your images better than the one serving them? Copy detection on a sample
of your own gallery, the label-free test `training` reports (service/edits.py).

A seeded sample of the stored originals is decoded for each model; each image gets one strong
edit (the same seed for every model, made at the model's input size); each edited copy then
searches the sample's originals under that model, and should find its own first (originals
with identical pixels all count). R@1 is the share that do. Both models answer the same queries
over the same originals, so their scores compare directly; a sample of 1,000 leaves a standard
error of about one point for each score, and less for their difference, which is paired
(the same originals).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.edits import EDIT_SEED, strong_edit
from service.encoder import Encoder
from service.imaging import ImageError, decode_image
from service.store import Store

log = logging.getLogger(__name__)

DEFAULT_SAMPLE = 1000
EMBED_BATCH = 64

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ModelScore:
    name: str
    version: str
    recall_at_1: float  # the share of edited copies whose original ranks first
    standard_error: float  # of recall_at_1, binomial over the sample

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "recall_at_1": round(self.recall_at_1, 4),
            "standard_error": round(self.standard_error, 4),
        }


@dataclass(frozen=True)
class CheckResult:
    images: int  # originals in the sample that both models could decode
    unreadable: int  # sampled originals left out: missing, or not decodable
    serving: ModelScore
    candidate: ModelScore
    difference_error: float  # standard error of candidate − serving, paired by original

    @property
    def difference(self) -> float:
        return self.candidate.recall_at_1 - self.serving.recall_at_1

    def to_json(self) -> dict:
        return {
            "images": self.images,
            "unreadable": self.unreadable,
            "serving": self.serving.to_json(),
            "candidate": self.candidate.to_json(),
            "difference": round(self.difference, 4),
            "difference_error": round(self.difference_error, 4),
        }


def check_models(
    store: Store,
    serving: Encoder,
    candidate: Encoder,
    *,
    sample: int = DEFAULT_SAMPLE,
    progress: Progress | None = None,
) -> CheckResult:
    """Copy-detection R@1 of both encoders on the same `sample` stored originals."""
    say = progress or (lambda _: None)
    contents = [store.read_original(sha) for sha in store.sample_originals(sample)]
    if not contents:
        raise ValueError("the gallery is empty: there is nothing to check the models on")
    decoded = [_decode_each(contents, encoder) for encoder in (serving, candidate)]
    readable = [i for i in range(len(contents)) if all(d[i] is not None for d in decoded)]
    if len(readable) < 2:
        raise ValueError(
            f"the gallery has {len(readable)} readable image(s); copy detection needs at least 2"
        )
    say(f"{len(readable)} stored images sampled ({len(contents) - len(readable)} unreadable)")
    hits = []
    for encoder, pixels in zip((serving, candidate), decoded, strict=True):
        say(f"embedding them and an edited copy of each with {_label(encoder)}")
        hits.append(copy_hits(encoder, [pixels[i] for i in readable]))  # type: ignore[misc]
    n = len(readable)
    serving_score, candidate_score = (
        ModelScore(e.info.name, e.info.version, float(h.mean()), float(h.std() / math.sqrt(n)))
        for e, h in zip((serving, candidate), hits, strict=True)
    )
    paired = hits[1].astype(np.float64) - hits[0]
    return CheckResult(
        n,
        len(contents) - n,
        serving_score,
        candidate_score,
        float(paired.std() / math.sqrt(n)),
    )


def copy_hits(encoder: Encoder, originals: list[np.ndarray]) -> np.ndarray:
    """(N,) bool: whether the edited copy of each original scores it (or one with identical
    pixels) above every other original. `originals`: uint8 (H, W, C) at the model's input size."""
    edited = [
        strong_edit(image, np.random.default_rng([EDIT_SEED, i]))[0]
        for i, image in enumerate(originals)
    ]
    bank, queries = _embed(encoder, originals), _embed(encoder, edited)
    groups = _pixel_groups(originals)
    hits = []
    for start in range(0, len(queries), EMBED_BATCH):
        scores = queries[start : start + EMBED_BATCH] @ bank.T  # (b, N)
        own = groups[None, :] == groups[start : start + EMBED_BATCH, None]  # (b, N)
        best_own = np.where(own, scores, -np.inf).max(axis=1)
        best_other = np.where(own, -np.inf, scores).max(axis=1)
        hits.append(best_own > best_other)  # a tie is a miss: a collapsed model finds nothing
    return np.concatenate(hits)


def _decode_each(contents: list[bytes | None], encoder: Encoder) -> list[np.ndarray | None]:
    decoded: list[np.ndarray | None] = []
    for content in contents:
        try:
            decoded.append(None if content is None else decode_image(content, encoder.info.spec))
        except ImageError as exc:
            log.warning("a sampled original is left out: %s", exc)
            decoded.append(None)
    return decoded


def _embed(encoder: Encoder, images: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(
        [
            encoder.embed_pixels(images[i : i + EMBED_BATCH])
            for i in range(0, len(images), EMBED_BATCH)
        ]
    )


def _pixel_groups(images: list[np.ndarray]) -> np.ndarray:
    """Images with identical pixels share a group number (each counts as the other's original)."""
    digests: dict[bytes, int] = {}
    return np.array(
        [digests.setdefault(hashlib.sha1(i.tobytes()).digest(), len(digests)) for i in images]
    )


def _label(encoder: Encoder) -> str:
    return f"{encoder.info.name} {encoder.info.version[:12]}"
