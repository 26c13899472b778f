"""The demo gallery, so a newcomer gets useful /nearest answers at once. Each image goes in as a
PNG, like any upload.

fashion-mnist: Fashion-MNIST test images with their class names (for the shipped model).
icons: the PNG icons of Debian's oxygen-icon-theme, for the colour model (models/icons). Oxygen
is held out of that model's training (bench/icons_corpus.py), so this is search on a style it
never saw.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from service.config import Settings
from service.fashion_mnist import FASHION_MNIST_CLASSES, load_split
from service.gallery import Gallery
from service.imaging import encode_png
from service.models import ModelSet, new_images
from service.store import DEFAULT_COLLECTION

log = logging.getLogger(__name__)
BATCH = 256
ICON_MIN_SIZE = 48  # smaller drawings are blurry at the model's 128 px (as in training)
SIZE_FOLDER = re.compile(r"(\d+)x\1")  # 128x128/apps/konqueror.png
SKIP_CONTEXTS = {"animations"}  # sprite strips, not one drawing

DemoImage = tuple[str, bytes, dict]  # id, PNG bytes, metadata


def seed_demo_gallery(gallery: Gallery, models: ModelSet, settings: Settings) -> int:
    """Upload up to DEMO_GALLERY_SIZE images of the SEED_DEMO_GALLERY gallery when the gallery
    is empty; return how many. One process does it; the others wait, then find it filled."""
    size = settings.demo_gallery_size
    with gallery.chore("seed"):
        if gallery.count(DEFAULT_COLLECTION):
            return 0
        try:
            if settings.seed_demo_gallery == "icons":
                images = oxygen_icons(settings.demo_icons_dir, size)
            else:
                images = fashion_mnist(size)
        except FileNotFoundError as exc:
            log.warning("demo gallery skipped: %s", exc)
            return 0
        return _seed(gallery, models, images)


def fashion_mnist(size: int) -> list[DemoImage]:
    images, labels = load_split("test")
    return [
        (
            f"fmnist-test-{i:05d}",
            encode_png(images[i]),
            {"label": FASHION_MNIST_CLASSES[labels[i]], "source": "fashion-mnist/test"},
        )
        for i in range(min(size, len(images)))
    ]


def oxygen_icons(root: Path, size: int) -> list[DemoImage]:
    """The first `size` oxygen icons by name: per name the largest PNG of at least
    ICON_MIN_SIZE px; a link to a drawing already taken (an alias) is left out."""
    largest: dict[str, tuple[int, Path]] = {}
    # base/128x128/apps/x.png (Debian since bookworm), or 128x128/apps/x.png
    for path in sorted([*root.glob("*/*/*.png"), *root.glob("base/*/*/*.png")]):
        match = SIZE_FOLDER.fullmatch(path.parent.parent.name)
        if not match or path.parent.name in SKIP_CONTEXTS or not path.is_file():
            continue
        pixels = int(match.group(1))
        if pixels >= ICON_MIN_SIZE and pixels > largest.get(path.stem, (0, path))[0]:
            largest[path.stem] = (pixels, path)
    if not largest:
        raise FileNotFoundError(
            f"no oxygen icons (PNG, {ICON_MIN_SIZE} px or more) in {root}. Install them with "
            "`apt-get install oxygen-icon-theme` (Debian), or set LOOKALIKE_DEMO_ICONS_DIR to "
            "a folder laid out like /usr/share/icons/oxygen (base/128x128/apps/*.png)."
        )
    chosen: dict[str, Path] = {}
    taken: set[Path] = set()
    # Real files first, so that an alias never takes a drawing's own name.
    for name, (_, path) in sorted(largest.items(), key=lambda kv: (kv[1][1].is_symlink(), kv[0])):
        if (real := path.resolve()) not in taken:
            taken.add(real)
            chosen[name] = path
    return [
        (
            f"oxygen-{name}",
            chosen[name].read_bytes(),
            {"theme": "oxygen", "name": name, "context": chosen[name].parent.name},
        )
        for name in sorted(chosen)[:size]
    ]


def _seed(gallery: Gallery, models: ModelSet, images: list[DemoImage]) -> int:
    for start in range(0, len(images), BATCH):
        batch = images[start : start + BATCH]
        vectors = models.embed_blocking([png for _, png, _ in batch])
        items = [(image_id, png, "PNG", metadata) for image_id, png, metadata in batch]
        serving = gallery.serving  # any kept model's vector can be the row's own
        gallery.upsert(new_images(items, vectors, serving), serving)
        log.info("seeding demo gallery", extra={"done": start + len(batch), "total": len(images)})
    return len(images)
