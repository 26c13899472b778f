"""Label-free quality: copy detection, the task of Meta's Image Similarity Challenge (DISC21)
and of SSCD (Pizzi et al., 2022).

Each held-out image gets one seeded strong edit; the edited copy queries a bank of every
original (the training images and the held-out ones), and its original should come back
first. Bank images with identical pixels all count as the original. Reported: recall@1,
recall@10 (the original within the top 1 / 10) and mAP (average precision of the originals
in each query's ranking, averaged over queries).

The edits are made at the model's input size, with the same seed for every model and
baseline, so two models evaluated on one folder answer the same queries.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from service.edits import EDIT_SEED, strong_edit
from training.data import Split

CHUNK = 128
PROTOCOL = {
    "copy_r1": "copy detection: the edited held-out image's original ranks first in the bank",
    "copy_r10": "copy detection: the original is within the top 10 of the bank",
    "copy_map": "copy detection: mean average precision of the original(s) in the bank ranking",
}


@dataclass
class CopyDetectionSet:
    """The queries of one split. The bank is split.train's images, then split.heldout's."""

    queries: np.ndarray  # (Q, H, W, C) uint8: held-out image i, edited
    targets: np.ndarray  # (Q,) int64: each query's original in the bank
    groups: np.ndarray  # (N_bank,) int64: bank images with identical pixels share a group
    edits: tuple[str, ...]  # (Q,) what was done to each query


def bank_images(split: Split) -> np.ndarray:
    return np.concatenate([split.train.images, split.heldout.images])


def build_queries(split: Split, *, max_queries: int | None = None) -> CopyDetectionSet:
    """Edit the first `max_queries` held-out images (all by default), seeded per image."""
    heldout = split.heldout.images[:max_queries]
    edited = [
        strong_edit(image, np.random.default_rng([EDIT_SEED, i])) for i, image in enumerate(heldout)
    ]
    bank = bank_images(split)
    digests: dict[bytes, int] = {}
    groups = np.array(
        [
            digests.setdefault(hashlib.sha1(image.tobytes()).digest(), len(digests))
            for image in bank
        ],
        dtype=np.int64,
    )
    return CopyDetectionSet(
        queries=np.stack([image for image, _ in edited]),
        targets=len(split.train) + np.arange(len(heldout), dtype=np.int64),
        groups=groups,
        edits=tuple(edit for _, edit in edited),
    )


def copy_detection_metrics(
    bank_h: torch.Tensor, query_h: torch.Tensor, cds: CopyDetectionSet
) -> dict[str, float]:
    """R@1, R@10 and mAP of the queries against the bank. Features: unit (N, D) and (Q, D)
    fp32 on one device. A bank image that ties an original's score ranks after it."""
    groups = torch.from_numpy(cds.groups).to(bank_h.device)
    query_groups = groups[torch.from_numpy(cds.targets).to(bank_h.device)]
    r1 = r10 = ap = 0.0
    for start in range(0, len(query_h), CHUNK):
        scores = query_h[start : start + CHUNK] @ bank_h.T  # (b, N)
        relevant = groups[None, :] == query_groups[start : start + CHUNK, None]  # (b, N)
        count = relevant.sum(1)  # (b,) originals per query: 1 unless the bank has copies
        originals = scores.masked_fill(~relevant, -math.inf).topk(int(count.max()), dim=1).values
        precision_sum = torch.zeros(len(scores), device=scores.device)
        for k in range(originals.shape[1]):  # the (k+1)-th best-scored original of each query
            score = originals[:, k, None]  # (b, 1)
            above = (scores > score).sum(1)  # every bank image scored higher
            tied_before = k - (originals > score).sum(1)  # originals tied and listed earlier
            rank = above + tied_before + 1  # (b,)
            precision_sum += torch.where(k < count, (k + 1) / rank, 0.0)
            if k == 0:
                r1 += (rank == 1).sum().item()
                r10 += (rank <= 10).sum().item()
        ap += (precision_sum / count).sum().item()
    n = len(query_h)
    return {"copy_r1": r1 / n, "copy_r10": r10 / n, "copy_map": ap / n}
