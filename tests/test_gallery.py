"""Galleries over one store, as worker processes and replicas use it, on both backends: each
has its own index view, derived from the store's change log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.encoder import Encoder, load_encoder
from service.gallery import Gallery
from service.imaging import decode_image
from service.store import ModelMismatch, NewImage, Store, open_store
from testkit.app import make_settings
from testkit.artifacts import export_random_artifact
from testkit.images import png_bytes


@pytest.fixture(scope="module")
def encoder(artifact: Path) -> Encoder:
    return load_encoder(artifact)


def new_image(encoder: Encoder, image_id: str, seed: int) -> NewImage:
    content = png_bytes(seed)
    vector = encoder.embed_pixels([decode_image(content, encoder.info.spec)])[0]
    return NewImage(image_id, content, "PNG", {"seed": seed}, vector)


def top_id(gallery: Gallery, encoder: Encoder, seed: int) -> str | None:
    query = encoder.embed_pixels([decode_image(png_bytes(seed), encoder.info.spec)])
    hits = gallery.search(query, 1)[0]
    return hits[0].id if hits else None


class Galleries:
    """Galleries over one store, each in its own data dir (replicas) or one (workers)."""

    def __init__(self, artifact: Path, root: Path, store_settings: dict) -> None:
        self.artifact, self.root, self.store_settings = artifact, root, store_settings
        self.open: list[tuple[Gallery, Store]] = []

    def add(self, data_dir: str = "data", **overrides: object) -> Gallery:
        settings = make_settings(
            self.artifact, self.root / data_dir, **self.store_settings, **overrides
        )
        store = open_store(settings)
        gallery = Gallery(store, load_encoder(settings.model_dir), settings)
        gallery.open()
        self.open.append((gallery, store))
        return gallery

    def close(self) -> None:
        for gallery, store in self.open:
            gallery.close()
            store.close()


@pytest.fixture
def galleries(artifact: Path, tmp_path: Path, store_settings: dict) -> Iterator[Galleries]:
    made = Galleries(artifact, tmp_path, store_settings)
    yield made
    made.close()


@pytest.mark.parametrize("layout", ["one data dir", "two data dirs"])
def test_two_galleries_over_one_store_see_each_others_writes_at_once(
    galleries: Galleries, encoder: Encoder, layout: str
) -> None:
    if layout == "two data dirs" and not galleries.store_settings:
        pytest.skip("SQLite's truth lives in the data dir: its workers share one")
    a = galleries.add("data")
    b = galleries.add("data" if layout == "one data dir" else "other")
    for n in range(20):
        writer, reader = (a, b) if n % 2 else (b, a)
        assert writer.upsert([new_image(encoder, f"img{n}", seed=n)]) == [True]
        assert top_id(reader, encoder, n) == f"img{n}"  # the very next read, the other gallery
    assert b.upsert([new_image(encoder, "img3", seed=100)]) == [False]
    assert top_id(a, encoder, 100) == "img3"
    assert a.vector_of("img3") is not None and top_id(a, encoder, 3) != "img3"
    assert b.delete("img5") and not a.delete("img5")
    assert a.vector_of("img5") is None
    assert {h.id for h in a.search(np.stack([a.vector_of("img0")]), 50)[0]} == {
        f"img{n}" for n in range(20) if n != 5
    }
    assert a.status().indexed == b.status().indexed == a.count() == 19


def test_a_gallery_behind_the_pruned_log_rebuilds_and_misses_nothing(
    galleries: Galleries, encoder: Encoder
) -> None:
    fast = galleries.add()
    slow = galleries.add(follow_interval_s=3600)  # never catches up on its own
    fast.upsert([new_image(encoder, f"x{n}", seed=n) for n in range(5)])
    # No consumer has been seen within a retention of 0 s: the whole log goes.
    store = galleries.open[0][1]
    store.prune_log(retention_s=0)
    for n in range(5):
        assert top_id(slow, encoder, n) == f"x{n}"
    assert slow.status().indexed == 5


def test_writes_while_closed_are_replayed_on_the_next_open(
    galleries: Galleries, encoder: Encoder
) -> None:
    first = galleries.add()
    first.upsert([new_image(encoder, "before", seed=1)])
    other = galleries.add()
    gallery, store = galleries.open.pop(0)
    gallery.close()
    store.close()
    other.upsert([new_image(encoder, "meanwhile", seed=2)])
    assert other.delete("before")
    again = galleries.add()  # loads the snapshot, then replays the log
    assert top_id(again, encoder, 2) == "meanwhile"
    assert again.vector_of("before") is None and again.status().indexed == 1


def test_a_postgres_store_from_before_kept_models_refuses_another_model_until_reembedded(
    artifact: Path, tmp_path: Path, postgres, encoder: Encoder
) -> None:
    url = postgres.new_database()
    settings = make_settings(artifact, tmp_path / "a", database_url=url)
    store = open_store(settings)
    store.migrate()  # as a lookalike before kept models left it: vectors, a recorded model
    store.set_model_version(encoder.info.version)
    store.upsert([new_image(encoder, "kept", seed=4)], encoder.info.version)
    other_model = export_random_artifact(tmp_path / "other", seed=9)
    other_settings = make_settings(other_model, tmp_path / "b", database_url=url)
    other_encoder = load_encoder(other_model)
    refused = Gallery(store, other_encoder, other_settings)
    with pytest.raises(ModelMismatch, match="python -m service reembed"):
        refused.open()
    assert refused.upgrade_model()  # what `python -m service reembed` runs
    upgraded = Gallery(store, other_encoder, other_settings)
    upgraded.open()
    try:
        assert top_id(upgraded, other_encoder, 4) == "kept"
        assert upgraded.status().indexed == 1 and store.count_stale(other_encoder.info.version) == 0
        assert store.kept_models() == [other_encoder.info.version]  # from now on it keeps it
    finally:
        upgraded.close()


def test_a_postgres_replica_with_another_model_dir_serves_the_stores_model(
    artifact: Path, tmp_path: Path, postgres, encoder: Encoder
) -> None:
    url = postgres.new_database()
    store = open_store(make_settings(artifact, tmp_path / "a", database_url=url))
    first = Gallery(store, encoder, make_settings(artifact, tmp_path / "a", database_url=url))
    first.open()
    first.upsert([new_image(encoder, "kept", seed=4)])
    first.close()
    other_model = export_random_artifact(tmp_path / "other", seed=9)
    other_settings = make_settings(other_model, tmp_path / "b", database_url=url)
    replica = Gallery(store, load_encoder(other_model), other_settings)
    replica.open()
    try:
        assert replica.serving == encoder.info.version
        assert top_id(replica, encoder, 4) == "kept"
    finally:
        replica.close()
        store.close()
