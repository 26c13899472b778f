"""The Store contract, on both backends: a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.store import LogTruncated, NewImage, Store, UnknownCollection, open_store
from service.store.base import ModelArtifact, ModelNotReady, ModelsChanged
from service.store.sqlite import SQLiteStore
from testkit.app import make_settings
from testkit.images import png_bytes

MODEL = "model-a"


def unit(seed: int, dim: int = 32) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def image(image_id: str, seed: int, **metadata: object) -> NewImage:
    return NewImage(image_id, png_bytes(seed), "PNG", dict(metadata), unit(seed))


@pytest.fixture
def settings(artifact: Path, tmp_path: Path, store_settings: dict):
    return make_settings(artifact, tmp_path / "data", **store_settings)


@pytest.fixture
def store(settings) -> Iterator[Store]:
    opened = open_store(settings)
    opened.migrate()
    yield opened
    opened.close()


def test_upsert_get_page_content_and_delete_round_trip(store: Store) -> None:
    results = store.upsert([image("a", 1, label="x"), image("b", 2)], MODEL)
    assert [created for created, _ in results] == [True, True]
    record = store.get("a")
    assert (
        record is not None and record.metadata == {"label": "x"} and record.model_version == MODEL
    )
    assert store.read_original(record.sha256) == png_bytes(1)
    page, cursor = store.page(after_key=0, limit=1)
    rest, end = store.page(after_key=cursor, limit=10)
    assert [r.id for r in page + rest] == ["a", "b"] and end is None
    assert store.count() == 2
    change = store.delete("a")
    assert change is not None and change.row is None and change.old_seq == record.seq
    assert store.get("a") is None and store.delete("a") is None
    assert store.read_original(record.sha256) is None  # no row points at it any more


def test_every_write_takes_the_next_seqs_and_the_log_replays_them(store: Store) -> None:
    first = store.upsert([image("a", 1), image("b", 2)], MODEL)
    start = store.last_seq()
    assert [c.seq for _, c in first] == [start - 1, start]
    again = store.upsert([image("a", 3, v=2)], MODEL)
    created, change = again[0]
    assert not created and change.old_seq == first[0][1].seq and change.seq == start + 1
    store.delete("b")
    changes = store.changes_since(0, MODEL)
    assert [(c.seq, c.old_seq) for c in changes] == [
        (start - 1, None),
        (start, None),
        (start + 1, start - 1),
        (start + 2, start),
    ]
    # An upsert whose row changed again since carries no row: the later change does.
    assert changes[0].row is None and changes[1].row is None and changes[3].row is None
    current = changes[2].row
    assert current is not None and current.id == "a" and json.loads(current.metadata) == {"v": 2}
    np.testing.assert_array_equal(current.vector, unit(3))
    assert store.last_seq() == start + 2
    assert store.changes_since(start + 2, MODEL) == []


def test_rows_yield_the_current_version_of_every_image(store: Store) -> None:
    store.upsert([image(f"i{n}", n) for n in range(5)], MODEL)
    store.upsert([image("i2", 99)], MODEL)
    store.delete("i4")
    batches = list(store.rows("default", max_seq=store.last_seq(), model=MODEL, batch=2))
    ids = [i for b in batches for i in b.ids]
    assert sorted(ids) == ["i0", "i1", "i2", "i3"]
    vectors = {i: v for b in batches for i, v in zip(b.ids, b.vectors, strict=True)}
    np.testing.assert_array_equal(vectors["i2"], unit(99))


def test_two_connections_upserting_one_id_at_once_leave_one_row_and_a_consistent_log(
    settings,
) -> None:
    stores = [open_store(settings) for _ in range(2)]
    stores[0].migrate()
    barrier = threading.Barrier(2)

    def write(which: int) -> None:
        barrier.wait()
        for round_ in range(20):
            stores[which].upsert([image("same", which * 1000 + round_)], MODEL)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        store = stores[0]
        assert store.count() == 1
        changes = store.changes_since(0, MODEL)
        assert len(changes) == 40 and [c.seq for c in changes] == sorted(c.seq for c in changes)
        # Each upsert retired exactly the version before it: the log is one chain.
        assert [c.old_seq for c in changes[1:]] == [c.seq for c in changes[:-1]]
        live = [c for c in changes if c.row is not None]
        record = store.get("same")
        assert record is not None and [c.seq for c in live] == [record.seq]
    finally:
        for s in stores:
            s.close()


def test_the_log_is_pruned_only_below_the_slowest_consumer_that_counts(store: Store) -> None:
    store.upsert([image(f"p{n}", n) for n in range(10)], MODEL)
    head = store.last_seq()
    store.ack("slow", head - 6)
    store.ack("fast", head)
    assert store.prune_log(retention_s=3600) == head - 6
    assert len(store.changes_since(head - 6, MODEL)) == 6
    with pytest.raises(LogTruncated):
        store.changes_since(head - 7, MODEL)  # below the floor: that reader must rebuild
    store.forget("slow")
    assert store.prune_log(retention_s=3600) == head
    store.ack("gone", 0)
    assert store.prune_log(retention_s=0) == head  # a consumer not seen in time does not count


def test_replacing_vectors_goes_through_the_log_and_skips_rows_changed_meanwhile(
    store: Store,
) -> None:
    store.upsert([image("a", 1), image("b", 2)], MODEL)
    a, b = store.get("a"), store.get("b")
    assert a is not None and b is not None
    store.upsert([image("b", 3)], MODEL)  # b changes after the re-embedder read it
    before = store.last_seq()
    assert store.replace_vectors([(a, unit(7)), (b, unit(8))], "model-b") == 1
    changes = store.changes_since(before, "model-b")
    assert len(changes) == 1 and changes[0].old_seq == a.seq and changes[0].row is not None
    np.testing.assert_array_equal(changes[0].row.vector, unit(7))
    assert store.count_stale("model-b") == 1  # b, re-uploaded with model-a
    assert [r.id for batch in store.stale("model-b") for r in batch] == ["b"]


def test_an_original_is_kept_while_any_row_shares_it(store: Store) -> None:
    store.upsert([image("a", 1), image("b", 1)], MODEL)  # the same bytes twice
    sha = store.get("a").sha256  # type: ignore[union-attr]
    store.delete("a")
    assert store.read_original(sha) == png_bytes(1)
    store.upsert([image("b", 2)], MODEL)  # b's new content: the old bytes are nobody's now
    assert store.read_original(sha) is None


def test_a_sample_of_originals_is_distinct_and_the_same_each_time(store: Store) -> None:
    store.create_collection("other")
    store.upsert([image(f"i{seed}", seed) for seed in range(20)], MODEL)
    store.upsert([image("copy", 3)], MODEL, collection="other")  # i3's bytes again
    everything = store.sample_originals(100)
    assert len(everything) == 20 and everything == sorted(everything)
    assert set(everything) == {store.get(f"i{seed}").sha256 for seed in range(20)}  # type: ignore[union-attr]
    assert store.sample_originals(5) == everything[:5] == store.sample_originals(5)


def test_migrating_twice_is_harmless_and_the_model_version_is_recorded(store: Store) -> None:
    store.migrate()
    assert store.model_version() is None
    store.set_model_version(MODEL)
    store.migrate()
    assert store.model_version() == MODEL


def test_a_gallery_from_before_the_log_head_is_upgraded_in_place(tmp_path: Path) -> None:
    """Version 0 (the layout before this change) kept the head in sqlite_sequence."""
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / "gallery.sqlite3")
    db.executescript(
        """
        CREATE TABLE images (key INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            metadata TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
            format TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
            model_version TEXT NOT NULL, vector BLOB NOT NULL, seq INTEGER NOT NULL UNIQUE);
        CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, old_seq INTEGER,
            kind TEXT NOT NULL);
        INSERT INTO changes (old_seq, kind) VALUES (NULL, 'upsert'), (NULL, 'upsert');
        DELETE FROM changes WHERE seq = 1;
        """
    )
    db.execute(
        "INSERT INTO images VALUES (1, 'old', '{}', 'x', 1, 'PNG', 't', 't', 'm', ?, 2)",
        (unit(1).tobytes(),),
    )
    db.commit()
    db.close()
    store = SQLiteStore(data)
    store.migrate()
    try:
        assert store.last_seq() == 2
        with pytest.raises(LogTruncated):
            store.changes_since(0, MODEL)  # change 1 was pruned by the old snapshotter
        assert [c.seq for c in store.changes_since(1, MODEL)] == [2]
        store.upsert([image("new", 5)], MODEL)
        assert store.last_seq() == 3
        old = store.get("old")  # every image from before collections is in `default`
        assert old is not None and old.collection == "default"
        assert store.collections() == [("default", 2)]
        assert [c.collection for c in store.changes_since(1, MODEL)] == ["default"] * 2
    finally:
        store.close()


def test_collections_keep_their_own_ids_and_a_drop_is_one_log_entry(store: Store) -> None:
    assert store.collections() == [("default", 0)]
    assert store.create_collection("shoes") and not store.create_collection("shoes")
    store.upsert([image("a", 1, label="x"), image("b", 2)], MODEL)
    made = store.upsert([image("a", 3), image("c", 2)], MODEL, "shoes")  # c shares b's bytes
    assert [created for created, _ in made] == [True, True]
    assert {c.collection for _, c in made} == {"shoes"}
    assert store.collections() == [("default", 2), ("shoes", 2)]
    assert store.count() == 4 and store.count("shoes") == 2
    a, shoe_a = store.get("a"), store.get("a", "shoes")
    assert a is not None and shoe_a is not None and a.metadata == {"label": "x"}
    assert shoe_a.collection == "shoes" and shoe_a.sha256 != a.sha256
    assert store.get("c") is None and store.delete("c") is None
    assert [r.id for r in store.page(after_key=0, limit=10, collection="shoes")[0]] == ["a", "c"]
    assert [r.id for r in store.by_seq([shoe_a.seq, a.seq])] == ["a", "a"]
    assert [b.ids for b in store.rows("shoes", max_seq=store.last_seq(), model=MODEL)] == [
        ["a", "c"]
    ]
    before = store.last_seq()
    change = store.drop_collection("shoes")
    assert change is not None and change.drop and change.collection == "shoes"
    assert store.changes_since(before, MODEL) == [change] and store.drop_collection("shoes") is None
    assert store.collections() == [("default", 2)] and store.get("a", "shoes") is None
    assert store.read_original(shoe_a.sha256) is None  # nobody else's
    assert store.read_original(store.get("b").sha256) is not None  # type: ignore[union-attr]
    with pytest.raises(UnknownCollection):
        store.upsert([image("d", 4)], MODEL, "shoes")
    assert store.last_seq() == before + 1  # the refused upsert took no seq


def artifact_of(version: str) -> ModelArtifact:
    return ModelArtifact(version, f"name-{version}", 32, json.dumps({"version": version}), b"onnx")


def vectors_of(store: Store, model: str) -> dict[str, np.ndarray]:
    """id → the vector of `model` that the store hands an index of `default`."""
    batches = store.rows("default", max_seq=store.last_seq(), model=model)
    return {i: v for batch in batches for i, v in zip(batch.ids, batch.vectors, strict=True)}


def test_a_kept_model_gets_vectors_beside_the_rows_and_one_log_entry_switches(
    store: Store,
) -> None:
    store.set_model_version(MODEL)
    store.upsert([image("a", 1), image("b", 2)], MODEL)
    assert store.add_model(artifact_of(MODEL)) and store.add_model(artifact_of("model-b"))
    assert not store.add_model(artifact_of("model-b"))  # kept already
    assert store.model_artifact("model-b") == artifact_of("model-b")
    head = store.last_seq()
    with pytest.raises(ModelsChanged):  # model-b is kept: a write must bring its vector
        store.upsert([image("c", 3)], MODEL)
    assert store.get("c") is None and store.last_seq() == head
    both = NewImage("c", png_bytes(3), "PNG", {}, unit(3), {"model-b": unit(33)})
    store.upsert([both], MODEL)
    assert store.count_missing("model-b") == 2  # a and b, from before it was kept
    with pytest.raises(ModelNotReady):
        store.activate_model("model-b")
    a, b = store.get("a"), store.get("b")
    assert a is not None and b is not None
    assert [[r.id for r in batch] for batch in store.missing_vectors("model-b")] == [["a", "b"]]
    again = NewImage("b", png_bytes(4), "PNG", {}, unit(4), {"model-b": unit(14)})
    store.upsert([again], MODEL)  # b changes after the re-embedder read it
    assert store.add_vectors("model-b", [(a, unit(11)), (b, unit(12))]) == 1  # a only
    assert store.count_missing("model-b") == 0 and list(store.missing_vectors("model-b")) == []
    assert [(m.version, m.active, m.vectors) for m in store.models()] == [
        (MODEL, True, 3),
        ("model-b", False, 3),
    ]
    np.testing.assert_array_equal(vectors_of(store, MODEL)["a"], unit(1))
    new = vectors_of(store, "model-b")
    for image_id, seed in (("a", 11), ("b", 14), ("c", 33)):
        np.testing.assert_array_equal(new[image_id], unit(seed))

    before = store.last_seq()
    switch = store.activate_model("model-b")
    assert switch.activates == "model-b" and switch.seq == before + 1
    assert store.changes_since(before, MODEL) == [switch]  # every process sees it in the log
    assert (store.model_version(), store.previous_model()) == ("model-b", MODEL)
    with pytest.raises(ModelNotReady):
        store.activate_model("model-b")  # serves already


def test_a_model_that_no_longer_serves_can_be_removed_and_rows_it_made_keep_a_vector(
    store: Store,
) -> None:
    store.set_model_version(MODEL)
    store.add_model(artifact_of(MODEL))
    store.upsert([image("old", 1)], MODEL)
    store.add_model(artifact_of("model-b"))
    store.add_vectors("model-b", [(store.get("old"), unit(21))])  # type: ignore[list-item]
    store.activate_model("model-b")
    made_by_b = NewImage("new", png_bytes(2), "PNG", {}, unit(22), {MODEL: unit(2)})
    store.upsert([made_by_b], "model-b")
    store.delete("old")
    again = NewImage("old", png_bytes(3), "PNG", {}, unit(23), {MODEL: unit(3)})
    store.upsert([again], "model-b")  # deleted and uploaded again: its vectors are new
    with pytest.raises(ModelNotReady):
        store.remove_model("model-b")  # it serves
    store.activate_model(MODEL)  # the rollback
    assert store.previous_model() == "model-b"
    assert store.remove_model("model-b") and not store.remove_model("model-b")
    assert store.previous_model() is None and [m.version for m in store.models()] == [MODEL]
    assert store.count_missing(MODEL) == 0
    kept = vectors_of(store, MODEL)
    np.testing.assert_array_equal(kept["new"], unit(2))  # made by model-b, now MODEL's own
    np.testing.assert_array_equal(kept["old"], unit(3))
    assert vectors_of(store, "model-b") == {}
    store.upsert([image("later", 4)], MODEL)  # only MODEL is kept now


def test_a_chore_held_elsewhere_is_not_taken_by_a_try(settings) -> None:
    first, second = open_store(settings), open_store(settings)
    try:
        with first.try_chore("build") as mine:
            assert mine
            with second.try_chore("build") as theirs:
                assert not theirs
        with second.try_chore("build") as theirs:
            assert theirs  # released
    finally:
        first.close()
        second.close()
