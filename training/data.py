"""Training data: Fashion-MNIST from its IDX files, or a folder of the user's own images.

Both give a `Dataset`: uint8 images (N, H, W, C) and, when known, integer labels that are
used for evaluation only, never by the unsupervised loss.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.imaging import ImageError, InputSpec, decode_image

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_ENV = "LOOKALIKE_FASHION_MNIST_DIR"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_SPEC = InputSpec(channels=1, height=28, width=28, colour_mode="L")


@dataclass
class Dataset:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray | None  # (N,) int64, evaluation only
    class_names: tuple[str, ...] = ()
    source: str = ""
    skipped: int = 0  # files that failed to decode (image folders)
    extra: dict = field(default_factory=dict)

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


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lookalike" / "fashion-mnist"


def _has_files(directory: Path) -> bool:
    names = [n for pair in FASHION_MNIST_FILES.values() for n in pair]
    return all((directory / n).is_file() for n in names)


def find_fashion_mnist(*, download: bool = True) -> Path:
    """Find the IDX files: env var, Debian package, user cache, then the official download."""
    candidates = []
    if os.environ.get(FASHION_MNIST_ENV):
        candidates.append(Path(os.environ[FASHION_MNIST_ENV]))
    candidates += [DEBIAN_FASHION_MNIST_DIR, _user_cache_dir()]
    for directory in candidates:
        if _has_files(directory):
            return directory
    if download:
        cache = _user_cache_dir()
        try:
            _download_fashion_mnist(cache)
            return cache
        except OSError as exc:
            log.warning("Fashion-MNIST download failed: %s", exc)
    raise FileNotFoundError(
        "Fashion-MNIST not found. Looked in: "
        + ", ".join(str(c) for c in candidates)
        + ". Install it with `apt-get install dataset-fashion-mnist` (Debian), or put the four "
        f"*-ubyte.gz files in a folder and set {FASHION_MNIST_ENV} to it."
    )


def _download_fashion_mnist(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in (n for pair in FASHION_MNIST_FILES.values() for n in pair):
        target = directory / name
        if target.exists():
            continue
        log.info("downloading %s", FASHION_MNIST_URL + name)
        partial = target.with_suffix(".part")
        with urllib.request.urlopen(FASHION_MNIST_URL + name, timeout=30) as response:
            partial.write_bytes(response.read())
        partial.rename(target)


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file: big-endian dims after a magic with the type and rank."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def load_fashion_mnist(split: str = "train") -> Dataset:
    directory = find_fashion_mnist()
    image_file, label_file = FASHION_MNIST_FILES[split]
    images = read_idx(directory / image_file)[:, :, :, None]  # (N, 28, 28, 1)
    labels = read_idx(directory / label_file).astype(np.int64)
    return Dataset(images, labels, FASHION_MNIST_CLASSES, f"fashion-mnist/{split} ({directory})")


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
