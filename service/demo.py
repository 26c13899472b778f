"""The demo gallery: Fashion-MNIST test images with their class names, so a newcomer gets
useful /nearest answers at once. Each goes in as a PNG, like any upload."""

from __future__ import annotations

import logging

from service.encoder import Encoder
from service.fashion_mnist import FASHION_MNIST_CLASSES, load_split
from service.gallery import Gallery
from service.imaging import decode_image, encode_png
from service.store import DEFAULT_COLLECTION, NewImage

log = logging.getLogger(__name__)
BATCH = 256


def seed_demo_gallery(gallery: Gallery, encoder: Encoder, size: int) -> int:
    """Upload the first `size` test images when the gallery is empty; return how many.
    One process does it; the others wait, then find the gallery filled."""
    with gallery.chore("seed"):
        if gallery.count(DEFAULT_COLLECTION):
            return 0
        try:
            images, labels = load_split("test")
        except FileNotFoundError as exc:
            log.warning("demo gallery skipped: %s", exc)
            return 0
        return _seed(gallery, encoder, images, labels, size)


def _seed(gallery: Gallery, encoder: Encoder, images, labels, size: int) -> int:
    spec = encoder.info.spec
    for start in range(0, min(size, len(images)), BATCH):
        stop = min(start + BATCH, size)
        pngs = [encode_png(image) for image in images[start:stop]]
        vectors = encoder.embed_pixels([decode_image(png, spec) for png in pngs])
        gallery.upsert(
            [
                NewImage(
                    f"fmnist-test-{i:05d}",
                    png,
                    "PNG",
                    {"label": FASHION_MNIST_CLASSES[labels[i]], "source": "fashion-mnist/test"},
                    vector,
                )
                for i, png, vector in zip(range(start, stop), pngs, vectors, strict=True)
            ]
        )
        log.info("seeding demo gallery", extra={"done": stop, "total": size})
    return size
