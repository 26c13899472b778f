"""Index generations: files written once at one log position and mapped by every worker of a data
dir, each worker keeping only the changes since (service/generation.py, collection_index.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from service import index_view
from service.collection_index import CollectionIndex
from service.encoder import load_encoder
from service.filters import parse_filter
from service.gallery import Gallery
from service.generation import Generations, PartSource
from service.index_options import IndexOptions
from service.store import NewImage, Store, open_store
from service.store.base import RowBatch
from testkit.app import make_settings, wait_until
from testkit.images import png_bytes

DIM = 16


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class Workers:
    """Galleries over one store and one data dir, as a service's workers are."""

    def __init__(self, artifact: Path, data_dir: Path, **overrides: object) -> None:
        self.settings = make_settings(artifact, data_dir, **overrides)
        self.encoder = load_encoder(artifact)
        self.opened: list[tuple[Gallery, Store]] = []
        self.rows: dict[str, tuple[np.ndarray, dict]] = {}  # what the store should hold
        self.rng = np.random.default_rng(0)

    def add(self) -> Gallery:
        store = open_store(self.settings)
        gallery = Gallery(store, self.encoder, self.settings)
        gallery.open()
        self.opened.append((gallery, store))
        return gallery

    def upload(self, gallery: Gallery, ids: list[str]) -> None:
        vectors = unit(self.rng, len(ids), self.encoder.info.dim)
        images = []
        for image_id, vector in zip(ids, vectors, strict=True):
            metadata = {"label": int(self.rng.integers(3))}
            images.append(
                NewImage(image_id, png_bytes(hash(image_id) % 10_000), "PNG", metadata, vector)
            )
            self.rows[image_id] = (vector, metadata)
        gallery.upsert(images)

    def delete(self, gallery: Gallery, ids: list[str]) -> None:
        for image_id in ids:
            assert gallery.delete(image_id)
            del self.rows[image_id]

    def exact(self, query: np.ndarray, k: int, label: int | None = None) -> list[str]:
        ids = [i for i, (_, m) in self.rows.items() if label is None or m["label"] == label]
        scores = np.array([self.rows[i][0] @ query for i in ids])
        return [ids[j] for j in np.argsort(-scores, kind="stable")[:k]]

    def close(self) -> None:
        for gallery, store in self.opened:
            gallery.close()
            store.close()


@pytest.fixture
def workers(artifact: Path, tmp_path: Path) -> Iterator[Callable[..., Workers]]:
    made: list[Workers] = []

    def make(**overrides: object) -> Workers:
        made.append(Workers(artifact, tmp_path / "data", **overrides))
        return made[-1]

    yield make
    for w in made:
        w.close()


def generation_seq(gallery: Gallery) -> int:
    return int((gallery.status().index_generation or "-1-").split("-")[0])


def test_workers_share_a_generation_and_all_switch_to_the_next(workers, tmp_path: Path) -> None:
    w = workers(compact_after_changes=50, index_kind="flat")
    first, second = w.add(), w.add()
    w.upload(first, [f"a{i}" for i in range(40)])
    assert first.status().index_generation == second.status().index_generation  # the empty one
    w.upload(second, [f"b{i}" for i in range(40)])
    w.delete(first, [f"a{i}" for i in range(10)])
    w.upload(first, [f"a{i}" for i in range(20, 30)])  # replaced: a new version of each
    store_seq = first.status().store_seq
    for gallery in (first, second):  # 100 changes: one of them writes, both switch
        wait_until(lambda g=gallery: generation_seq(g) >= 50)
    wait_until(lambda: first.status().index_generation == second.status().index_generation)
    rng = np.random.default_rng(1)
    for gallery in (first, second):
        assert gallery.status().indexed == len(w.rows) == 70
        for query in unit(rng, 5, w.encoder.info.dim):
            assert [h.id for h in gallery.search(query[None], 10)[0]] == w.exact(query, 10)
            where = parse_filter({"label": 1})
            hits = gallery.search(query[None], 10, where=where)[0]
            assert [h.id for h in hits] == w.exact(query, 10, label=1)
        assert gallery.vector_of("a5") is None and gallery.vector_of("a25") is not None
    assert first.status().store_seq == store_seq
    newest = (tmp_path / "data" / "generations" / "CURRENT").read_text()
    wait_until(lambda: {p.name for p in (tmp_path / "data" / "generations").glob("0*")} == {newest})


def test_a_first_generation_of_many_rows_is_written_by_a_child_process(
    workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_view, "IN_PROCESS_MAX_ROWS", 10)
    w = workers(index_kind="flat")
    w.upload(w.add(), [f"a{i}" for i in range(30)])
    w.close()
    shutil.rmtree(tmp_path / "data" / "generations")  # lost: the next start writes one

    def not_here(*args: object) -> None:
        raise AssertionError("30 rows are past IN_PROCESS_MAX_ROWS: a child writes them")

    monkeypatch.setattr(index_view, "write_store_rows", not_here)  # the child is a fresh process
    gallery = w.add()
    assert gallery.status().indexed == 30 and generation_seq(gallery) >= 30
    for query in unit(np.random.default_rng(2), 5, w.encoder.info.dim):
        assert [h.id for h in gallery.search(query[None], 10)[0]] == w.exact(query, 10)
        hits = gallery.search(query[None], 10, where=parse_filter({"label": 2}))[0]
        assert [h.id for h in hits] == w.exact(query, 10, label=2)


def test_an_hnsw_part_is_extended_until_a_tenth_of_it_is_deleted(workers) -> None:
    w = workers(compact_after_changes=20, index_kind="hnsw")
    gallery = w.add()
    w.upload(gallery, [f"i{i}" for i in range(100)])
    wait_until(lambda: generation_seq(gallery) >= 100)
    w.delete(gallery, [f"i{i}" for i in range(5)])
    w.upload(gallery, [f"n{i}" for i in range(15)])  # 20 changes: the next generation
    wait_until(lambda: generation_seq(gallery) >= 120)
    assert gallery.status().index_tombstones == 5  # extended: 5 of 115 rows deleted, kept
    w.delete(gallery, [f"i{i}" for i in range(5, 25)])  # 25 of 115: past a tenth
    wait_until(lambda: generation_seq(gallery) >= 140)
    assert gallery.status().index_tombstones == 0  # built again without them
    rng = np.random.default_rng(2)
    for query in unit(rng, 5, w.encoder.info.dim):
        assert [h.id for h in gallery.search(query[None], 10)[0]] == w.exact(query, 10)


def centroids(data_dir: Path) -> np.ndarray:
    """The IVF lists' centres of the newest generation's first part."""
    root = data_dir / "generations"
    index = faiss.read_index(str(root / (root / "CURRENT").read_text() / "c0" / "index.faiss"))
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def test_a_gallery_past_the_compressed_threshold_is_served_from_an_ivf_part(
    workers, tmp_path: Path
) -> None:
    w = workers(
        approximate_index_min_vectors=200,
        compressed_index_min_vectors=1100,
        compact_after_changes=20,
    )
    first, second = w.add(), w.add()
    for start in range(0, 1200, 300):
        w.upload(first, [f"i{i}" for i in range(start, start + 300)])
    for gallery in (first, second):  # its size calls for another kind: a generation at once
        wait_until(lambda g=gallery: g.status().index_kind == "ivf")
    wait_until(lambda: generation_seq(first) >= 1200)
    lists = centroids(tmp_path / "data")
    w.delete(second, [f"i{i}" for i in range(10)])
    w.upload(second, [f"n{i}" for i in range(10)])  # 20 changes: the next generation …
    wait_until(lambda: generation_seq(first) >= 1220 and generation_seq(second) >= 1220)
    assert np.array_equal(centroids(tmp_path / "data"), lists)  # … keeps the lists: no k-means
    w.upload(second, [f"d{i}" for i in range(5)])  # in each worker's delta, merged
    rng = np.random.default_rng(3)
    for gallery in (first, second):
        assert gallery.status().indexed == len(w.rows) == 1205
        recalls, filtered_recalls = [], []
        for query in unit(rng, 10, w.encoder.info.dim):
            hits = [h.id for h in gallery.search(query[None], 10)[0]]
            assert len(hits) == 10 and not {f"i{i}" for i in range(10)} & set(hits)
            recalls.append(len(set(hits) & set(w.exact(query, 10))) / 10)
            where = parse_filter({"label": 2})
            filtered = gallery.search(query[None], 10, where=where)[0]
            assert len(filtered) == 10 and all(h.metadata["label"] == 2 for h in filtered)
            expected = w.exact(query, 10, label=2)
            filtered_recalls.append(len({h.id for h in filtered} & set(expected)) / 10)
        assert np.mean(recalls) >= 0.9 and np.mean(filtered_recalls) >= 0.9
        for image_id in ("i500", "n3"):
            assert np.array_equal(gallery.vector_of(image_id), w.rows[image_id][0])


def test_a_generation_is_due_at_a_share_of_the_size_or_the_fixed_count() -> None:
    def index_of(n: int) -> CollectionIndex:
        index = CollectionIndex(DIM, IndexOptions(kind="flat"), None, 0)
        vectors = unit(np.random.default_rng(0), n, DIM)
        index.delta.add(
            RowBatch(np.arange(1, n + 1), vectors, [f"i{i}" for i in range(n)], ["{}"] * n)
        )
        return index

    big, small = index_of(60_000), index_of(10_000)
    big.changes = small.changes = 999
    assert not big.due(10_000, 0.02) and not small.due(10_000, 0.02)
    assert big.due(999, 0.02)  # the fixed count, when it is fewer
    big.changes = small.changes = 1000
    assert small.due(10_000, 0.02)  # 2 % of 10,000 is 200: at least 1,000
    assert not big.due(10_000, 0.02)
    big.changes = 1200  # 2 % of 60,000
    assert big.due(10_000, 0.02)


def rows(n: int, start: int = 1) -> RowBatch:
    labels = np.arange(start, start + n, dtype=np.int64)
    return RowBatch(
        labels,
        unit(np.random.default_rng(start), n, DIM),
        [f"img{i}" for i in labels.tolist()],
        [f'{{"n": {i}}}' for i in labels.tolist()],
    )


def test_a_generation_still_mapped_is_kept_and_retired_once_unmapped(tmp_path: Path) -> None:
    generations = Generations(tmp_path, DIM, IndexOptions(), "model")
    first = generations.write(10, {"default": PartSource(10, [rows(10)], {})})
    mapped = generations.open_current()
    assert mapped is not None and mapped.name == first and mapped.parts["default"].count == 10
    second = generations.write(20, {"default": PartSource(20, [rows(20)], {})})
    with generations.writing(wait=False) as mine:
        assert mine
        generations.retire()
    assert (generations.root / first).exists()  # still mapped
    mapped.release()
    with generations.writing(wait=False):
        generations.retire()
    assert not (generations.root / first).exists() and (generations.root / second).exists()


def test_a_generation_from_another_model_or_damaged_is_not_opened(tmp_path: Path) -> None:
    Generations(tmp_path, DIM, IndexOptions(), "old model").write(
        5, {"default": PartSource(5, [rows(5)], {})}
    )
    assert Generations(tmp_path, DIM, IndexOptions(), "new model").open_current() is None
    generations = Generations(tmp_path, DIM, IndexOptions(), "old model")
    (labels,) = generations.root.glob("*/c0/labels.npy")
    labels.write_bytes(labels.read_bytes()[:-8] + bytes(8))
    assert generations.open_current() is None


SLOW_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from service.generation import Generations, PartSource
from service.index_options import IndexOptions
from service.store.base import RowBatch

def rows():
    for start in range(1, 1000, 10):
        labels = np.arange(start, start + 10, dtype=np.int64)
        vectors = np.eye(16, dtype=np.float32)[labels % 16]
        yield RowBatch(labels, vectors, [f"x{i}" for i in labels], ["{}"] * 10)
        print("batch", flush=True)
        time.sleep(0.05)

generations = Generations(Path(sys.argv[1]), 16, IndexOptions(), "model")
with generations.writing(wait=True):
    generations.write(1000, {"default": PartSource(1000, rows(), {})})
"""


def test_a_writer_killed_mid_write_leaves_the_previous_generation(tmp_path: Path) -> None:
    generations = Generations(tmp_path, DIM, IndexOptions(), "model")
    before = generations.write(10, {"default": PartSource(10, [rows(10)], {})})
    writer = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert writer.stdout is not None
    for _ in range(5):
        writer.stdout.readline()  # it is writing
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert list(generations.root.glob("tmp-*"))  # what it left
    assert generations.current() == before
    opened = generations.open_current()
    assert opened is not None and opened.parts["default"].count == 10
    opened.release()
    with generations.writing(wait=False) as mine:  # its lock died with it
        assert mine
        generations.retire()
    assert not list(generations.root.glob("tmp-*"))
