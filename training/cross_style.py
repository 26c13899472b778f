"""Cross-style retrieval: "the same thing drawn in another style".

Two folders draw the same things in two styles (two icon themes, two designers, two photo
sessions), one file stem per thing: `oxygen/folder.png` and `breeze/folder.svg.png` are not the
same stem, `oxygen/folder.png` and `breeze/folder.png` are. Each drawing whose stem the other
folder also has queries every image of the other folder; recall@k counts the queries whose
namesake ranks among the first k. Both directions are measured and averaged, so neither style is
favoured. The other folder's unpaired images stay in its gallery as distractors.

    python -m training evaluate --model models/icons \
        --cross-style data/icons/oxygen data/icons/breeze
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from service.imaging import InputSpec
from training.data import Dataset, load_image_folder

RECALL_AT = (1, 10)
METRICS = {f"cross_style_r{k}": k for k in RECALL_AT}


@dataclass(frozen=True)
class StylePair:
    a: Dataset
    b: Dataset
    a_of_b: np.ndarray  # (P,) index into a.images of each shared stem
    b_of_a: np.ndarray  # (P,) index into b.images of the same stems, in the same order

    @property
    def shared(self) -> int:
        return len(self.a_of_b)

    def describe(self) -> str:
        return (
            f"{self.shared} things drawn in both {self.a.source} ({len(self.a)} images) and "
            f"{self.b.source} ({len(self.b)} images)"
        )


def _stems(data: Dataset) -> dict[str, int]:
    """Stem → index, where a stem names one image of the folder (a stem found twice, in two
    subfolders, is ambiguous and left out)."""
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(data.names):
        seen.setdefault(PurePosixPath(name).stem, []).append(i)
    return {stem: found[0] for stem, found in seen.items() if len(found) == 1}


def load_pair(a: str | Path, b: str | Path, spec: InputSpec) -> StylePair:
    """Both folders decoded as the model's input wants; refused when they share no stem."""
    first, second = (load_image_folder(Path(d), spec, label_depth=0) for d in (a, b))
    stems_a, stems_b = _stems(first), _stems(second)
    shared = sorted(stems_a.keys() & stems_b.keys())
    if not shared:
        raise ValueError(
            f"--cross-style {a} {b}: no file name (stem) is in both folders; name one thing's "
            "two drawings alike, e.g. a/folder.png and b/folder.png"
        )
    return StylePair(
        first,
        second,
        np.array([stems_a[s] for s in shared], dtype=np.int64),
        np.array([stems_b[s] for s in shared], dtype=np.int64),
    )


def _recall(queries: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Share of the queries whose target gallery row ranks within each k of RECALL_AT."""
    scores = queries @ gallery.T
    target_score = scores.gather(1, targets[:, None])
    rank = (scores > target_score).sum(1)  # ties favour the target, as in copy detection
    return [(rank < k).float().mean().item() for k in RECALL_AT]


def cross_style_metrics(h_a: torch.Tensor, h_b: torch.Tensor, pair: StylePair) -> dict:
    """Recall@k both ways from unit features of every image of each folder, averaged."""
    a_of_b, b_of_a = torch.from_numpy(pair.a_of_b), torch.from_numpy(pair.b_of_a)
    a_to_b = _recall(h_a[a_of_b], h_b, b_of_a)
    b_to_a = _recall(h_b[b_of_a], h_a, a_of_b)
    return {name: (x + y) / 2 for name, x, y in zip(METRICS, a_to_b, b_to_a, strict=True)}


def protocol(pair: StylePair, k: int) -> str:
    return (
        f"cross-style recall@{k}: {pair.describe()}; each drawing queries every image of the "
        f"other folder, its namesake within the first {k} counts; both directions averaged"
    )
