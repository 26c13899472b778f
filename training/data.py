"""Training data: Fashion-MNIST from its IDX files, or a folder of the user's own images.

Both give a `Split`: the images the encoder trains on, and held-out images it never sees,
which the copy-detection evaluation queries with (training/copy_detection.py). Images are
uint8 (N, H, W, C); labels, when known, are used for evaluation only, never by the loss.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from service.fashion_mnist import FASHION_MNIST_CLASSES, find_fashion_mnist, load_split
from service.imaging import ImageError, InputSpec, decode_image
from training.groups import check_source, group_ids

log = logging.getLogger(__name__)

# A folder's held-out share: about 5 %, at least 200 images, but never more than a fifth.
HOLDOUT_SHARE = 0.05
HOLDOUT_MIN = 200


@dataclass
class Dataset:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray | None  # (N,) int64, evaluation only
    class_names: tuple[str, ...] = ()
    source: str = ""
    skipped: int = 0  # files that failed to decode (image folders)
    names: tuple[str, ...] = ()  # file paths relative to the folder (image folders)
    groups: np.ndarray | None = None  # (N,) int64 group ids, -1 for none (--group-by)

    def __len__(self) -> int:
        return len(self.images)

    def take(self, index: np.ndarray) -> Dataset:
        return replace(
            self,
            images=self.images[index],
            labels=None if self.labels is None else self.labels[index],
            names=tuple(self.names[i] for i in index) if self.names else (),
            groups=None if self.groups is None else self.groups[index],
        )

    def subset(self, limit: int | None) -> Dataset:
        if not limit or limit >= len(self):
            return self
        return self.take(np.arange(limit))

    def summary(self) -> dict:
        return {
            "source": self.source,
            "images": len(self),
            "shape": list(self.images.shape[1:]),
            "labelled": self.labels is not None,
            "classes": len(self.class_names),
            "skipped_files": self.skipped,
        }


@dataclass
class Split:
    """What the encoder trains on, and the held-out images it never sees."""

    train: Dataset
    heldout: Dataset
    rule: str  # how the held-out images were chosen, for the card

    def limited(self, limit: int | None) -> Split:
        """A smoke run's --limit shrinks both parts, so the evaluation stays quick too."""
        heldout = self.heldout.subset(limit)
        rule = self.rule
        if len(heldout) < len(self.heldout):
            rule += f", of which the first {len(heldout)} are used (--limit)"
        return Split(self.train.subset(limit), heldout, rule)


def load_fashion_mnist(split: str = "train") -> Dataset:
    images, labels = load_split(split)
    return Dataset(
        images, labels, FASHION_MNIST_CLASSES, f"fashion-mnist/{split} ({find_fashion_mnist()})"
    )


def _decode_file(path: Path, spec: InputSpec) -> np.ndarray | str:
    try:
        return decode_image(path.read_bytes(), spec)
    except (ImageError, OSError) as exc:
        return str(exc)


def load_image_folder(root: Path, spec: InputSpec, *, label_depth: int = 1) -> Dataset:
    """Every file under `root` that the service would accept, decoded by its own function.

    Labels, for evaluation only, are the first `label_depth` folder levels of each file's
    path (1: the top-level subfolder), when every image sits that deep and there are at least
    two of them; 0 turns them off. Files that fail to decode are skipped and counted, with
    one warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of images")
    if label_depth < 0:
        raise ValueError(f"label depth must be 0 or more, got {label_depth}")
    paths = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(
            tqdm(
                pool.map(lambda p: _decode_file(p, spec), paths),
                total=len(paths),
                desc=f"reading {root}",
                unit="file",
                disable=len(paths) < 1000,
                mininterval=1,
            )
        )
    images, names, failures = [], [], []
    for path, result in zip(paths, decoded, strict=True):
        relative = path.relative_to(root).as_posix()
        if isinstance(result, str):
            failures.append(f"{relative}: {result}")
        else:
            images.append(result)
            names.append(relative)
    if failures:
        log.warning(
            "skipped %d of %d files that are not readable images (first: %s)",
            len(failures),
            len(paths),
            failures[0],
        )
    if not images:
        raise ValueError(f"no readable images under {root}")
    labels, class_names = _folder_labels(names, label_depth)
    return Dataset(
        np.stack(images), labels, class_names, str(root), skipped=len(failures), names=tuple(names)
    )


def _folder_labels(names: list[str], depth: int) -> tuple[np.ndarray | None, tuple[str, ...]]:
    parts = [name.split("/")[:-1] for name in names]
    if depth == 0 or any(len(p) < depth for p in parts):
        return None, ()
    folders = ["/".join(p[:depth]) for p in parts]
    class_names = tuple(sorted(set(folders)))
    if len(class_names) < 2:
        return None, ()
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index[f] for f in folders], dtype=np.int64), class_names


def holdout_order(names: tuple[str, ...]) -> np.ndarray:
    """Files ranked by a hash of their path: the held-out ones are the first, so the choice
    stays put when files are added or removed, and every run on a folder holds out the same."""
    keys = [hashlib.sha256(name.encode()).hexdigest() for name in names]
    return np.array(sorted(range(len(names)), key=keys.__getitem__), dtype=np.int64)


def holdout_count(n: int) -> int:
    return min(max(HOLDOUT_MIN, round(HOLDOUT_SHARE * n)), n // 5)


def split_folder(data: Dataset) -> Split:
    order = holdout_order(data.names)
    n = holdout_count(len(data))
    if n < 1:
        raise ValueError(f"{data.source} has {len(data)} images; training needs at least 5")
    return Split(
        train=data.take(np.sort(order[n:])),
        heldout=data.take(order[:n]),
        rule=f"{n} of {len(data)} images ({n / len(data):.1%}), chosen by a hash of their path",
    )


def load_data(
    name: str, spec: InputSpec, *, label_depth: int = 1, group_by: str | None = None
) -> Split:
    """Fashion-MNIST (its test split is the held-out part) or a folder of images, its images
    grouped by `group_by` (training/groups.py) when given."""
    if name == "fashion-mnist":
        if group_by:
            raise ValueError(
                "--group-by needs a folder of images (--data FOLDER): fashion-mnist has no "
                "file names or paths to group by"
            )
        test = load_fashion_mnist("test")
        return Split(load_fashion_mnist("train"), test, f"the {len(test)} test images")
    if group_by:
        check_source(group_by)
    data = load_image_folder(Path(name), spec, label_depth=label_depth)
    if group_by:
        data = replace(data, groups=group_ids(data.names, group_by, Path(name)))
    return split_folder(data)
