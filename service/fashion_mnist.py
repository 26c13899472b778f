"""Fashion-MNIST's IDX files: where to find them and how to read them, torch-free.

Training reads its data through these, and the service seeds its demo gallery with them.
Search order: $LOOKALIKE_FASHION_MNIST_DIR, the Debian package (`apt-get install
dataset-fashion-mnist`), the user cache, then the official download.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import urllib.request
from pathlib import Path

import numpy as np

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


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28, 1) uint8 and labels (N,) int64 of "train" or "test"."""
    directory = find_fashion_mnist()
    image_file, label_file = FASHION_MNIST_FILES[split]
    images = read_idx(directory / image_file)[:, :, :, None]
    return images, read_idx(directory / label_file).astype(np.int64)
