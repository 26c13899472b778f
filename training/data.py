"""Training data: Fashion-MNIST from its IDX files, or a folder of the user's own images.

Both give a `Dataset`: uint8 images (N, H, W, C) and, when known, integer labels that are
used for evaluation only, never by the unsupervised loss.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.fashion_mnist import FASHION_MNIST_CLASSES, find_fashion_mnist, load_split
from service.imaging import ImageError, InputSpec, decode_image

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray | None  # (N,) int64, evaluation only
    class_names: tuple[str, ...] = ()
    source: str = ""
    skipped: int = 0  # files that failed to decode (image folders)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, limit: int | None) -> Dataset:
        if not limit or limit >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:limit]
        return Dataset(self.images[:limit], labels, self.class_names, self.source, self.skipped)

    def summary(self) -> dict:
        return {
            "source": self.source,
            "images": len(self),
            "shape": list(self.images.shape[1:]),
            "labelled": self.labels is not None,
            "classes": len(self.class_names),
            "skipped_files": self.skipped,
        }


def load_fashion_mnist(split: str = "train") -> Dataset:
    images, labels = load_split(split)
    return Dataset(
        images, labels, FASHION_MNIST_CLASSES, f"fashion-mnist/{split} ({find_fashion_mnist()})"
    )


def load_image_folder(root: Path, spec: InputSpec) -> Dataset:
    """Every file under `root` that Pillow reads, decoded by the service's own function.

    Labels come from the first-level subfolder names when every image sits in one.
    Files that fail to decode are skipped and counted, with one warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of images")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    images, folders, failures = [], [], []
    for path in paths:
        try:
            images.append(decode_image(path.read_bytes(), spec))
        except (ImageError, OSError) as exc:
            failures.append(f"{path.relative_to(root)}: {exc}")
            continue
        relative = path.relative_to(root)
        folders.append(relative.parts[0] if len(relative.parts) > 1 else None)
    if failures:
        log.warning(
            "skipped %d of %d files that are not readable images (first: %s)",
            len(failures),
            len(paths),
            failures[0],
        )
    if not images:
        raise ValueError(f"no readable images under {root}")
    labels, class_names = None, ()
    if all(f is not None for f in folders):
        class_names = tuple(sorted(set(folders)))
        if len(class_names) > 1:
            index = {name: i for i, name in enumerate(class_names)}
            labels = np.array([index[f] for f in folders], dtype=np.int64)
        else:
            class_names = ()
    return Dataset(np.stack(images), labels, class_names, str(root), skipped=len(failures))


def load_dataset(name: str, spec: InputSpec | None = None) -> tuple[Dataset, Dataset | None]:
    """The training set and, when one exists, a labelled evaluation set."""
    if name == "fashion-mnist":
        return load_fashion_mnist("train"), load_fashion_mnist("test")
    if spec is None:
        raise ValueError("an image folder needs an input spec (image size and colour mode)")
    return load_image_folder(Path(name), spec), None
