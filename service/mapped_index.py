"""One collection's part of a generation (generation.py): written once, then mapped read-only by
every process (FAISS's IO_FLAG_MMAP_IFC, numpy's mmap), so its pages exist once in memory however
many workers search it.

The part's folder holds:
- `index.faiss`: IndexFlatIP, IndexHNSWFlat or an `ivf` index (its lists mapped too); FAISS ids
  are positions 0 … n-1;
- `vectors.f32` (`ivf` only): each position's exact vector, float32, for what is scored
  directly and for the next generation; read only where asked;
- `labels.npy`: each position's label (its row's seq), ascending;
- `ids.*`, `metadata.*`: each position's image id and metadata JSON (blobs.py), read only for
  the hits a search returns; `ids.order.npy`: the positions by id, to find one;
- `filters/`: the metadata index that filters read (frozen_metadata.py);
- `unreadable.json`: rows left out because their stored metadata is unreadable, {label: id}.

What a process keeps of its own is one flag per position it saw deleted since the generation was
written (a page of zeros costs nothing until a deletion touches it).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Iterator
from pathlib import Path

import faiss
import numpy as np
import orjson

from service import strict_json
from service.blobs import Blobs, BlobWriter, find, load_array, save_array, sorted_order
from service.durable import fsync_file
from service.filters import Filter
from service.frozen_metadata import FrozenMetadata, FrozenMetadataWriter
from service.index import Hit, SearchableIndex, ivf_over, log_left_out
from service.index_options import IndexKind, IndexOptions
from service.store.base import RowBatch

BATCH = 20_000  # rows per chunk when a part is read back to write the next generation
SCATTERED_FILES = ("vectors.f32",)  # read a row here and there (and whole only when written)


def write_part(
    directory: Path,
    index: faiss.Index | None,
    rows: Iterable[RowBatch],
    unreadable: dict[int, str],
    dead: np.ndarray | None = None,
    trained: faiss.Index | None = None,
) -> None:
    """Write a part into the empty folder `directory`: `rows` in label order, and their vectors in
    `index`, or, without one, in `vectors.f32` and then an `ivf` index built over them (its lists
    from `trained` when that fits: index.ivf_over). An index that already holds vectors (a part
    being extended) holds those of the first rows, and `dead` flags which of those were deleted
    since: they stay in the files, skipped by searches. A new row whose metadata the strict
    parser refuses is left out, logged, and listed with `unreadable` (rows left out before)."""
    held, position, dim = (index.ntotal if index is not None else 0), 0, 0
    labels: list[np.ndarray] = []
    filters = FrozenMetadataWriter()
    unreadable = dict(unreadable)
    exact = open(directory / "vectors.f32", "wb") if index is None else None  # noqa: SIM115
    with BlobWriter(directory, "ids") as ids, BlobWriter(directory, "metadata") as metadata:
        for batch in rows:
            dim = batch.vectors.shape[1]
            keep, new = [], []
            for i, (label, image_id, text) in enumerate(
                zip(batch.seqs.tolist(), batch.ids, batch.metadata, strict=True)
            ):
                if position < held and dead is not None and dead[position]:
                    filters.add(None)
                else:
                    try:
                        filters.add(strict_json.loads(text, "metadata"))
                    except strict_json.InvalidJSON as exc:
                        unreadable[label] = image_id
                        log_left_out(image_id, exc)
                        continue
                keep.append(i)
                if position >= held:
                    new.append(i)
                ids.add(image_id.encode())
                metadata.add(text.encode())
                position += 1
            if new:
                vectors = np.ascontiguousarray(batch.vectors[new], dtype=np.float32)
                if exact is not None:
                    exact.write(vectors.tobytes())
                else:
                    index.add(vectors)  # type: ignore[union-attr]
            labels.append(batch.seqs[keep].astype(np.int64))
    if exact is not None:
        exact.close()
        fsync_file(directory / "vectors.f32")
        index = ivf_over(_exact_vectors(directory, position, dim), trained)
    assert index is not None
    faiss.write_index(index, str(directory / "index.faiss"))
    fsync_file(directory / "index.faiss")
    save_array(directory / "labels.npy", np.concatenate([np.zeros(0, np.int64), *labels]))
    save_array(directory / "ids.order.npy", sorted_order(Blobs(directory, "ids")))
    tombstones = np.flatnonzero(dead) if dead is not None else np.zeros(0, np.int64)
    save_array(directory / "tombstones.npy", tombstones.astype(np.int64))
    filters.write(directory / "filters")
    listed = orjson.dumps({str(label): image_id for label, image_id in unreadable.items()})
    (directory / "unreadable.json").write_bytes(listed)
    fsync_file(directory / "unreadable.json")


def _exact_vectors(directory: Path, count: int, dim: int, *, scattered: bool = False) -> np.ndarray:
    """An `ivf` part's exact vectors, mapped read-only. `scattered`: reads will pick rows here
    and there (the matches of a filter), so the kernel reads no pages around them ahead: its
    read-ahead would otherwise bring the whole file into memory for a few thousand rows."""
    if not count:
        return np.zeros((0, dim), np.float32)
    with open(directory / "vectors.f32", "rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    if scattered:
        mapped.madvise(mmap.MADV_RANDOM)
    return np.frombuffer(mapped, np.float32, count * dim).reshape(count, dim)


class MappedIndex(SearchableIndex):
    def __init__(self, directory: Path, kind: IndexKind, options: IndexOptions) -> None:
        self.kind, self.options, self.directory = kind, options, directory
        mapped = faiss.IO_FLAG_MMAP if kind == "ivf" else faiss.IO_FLAG_MMAP_IFC  # lists / codes
        self._index = faiss.read_index(
            str(directory / "index.faiss"), mapped | faiss.IO_FLAG_READ_ONLY
        )
        self._set_search_depth()
        self._labels = load_array(directory / "labels.npy")
        self._exact = (
            _exact_vectors(directory, len(self._labels), self._index.d, scattered=True)
            if kind == "ivf"
            else None
        )
        self._ids = Blobs(directory, "ids")
        self._metadata = Blobs(directory, "metadata")
        self._id_order = load_array(directory / "ids.order.npy")
        self._filters = FrozenMetadata.open(directory / "filters")
        unreadable = orjson.loads((directory / "unreadable.json").read_bytes())
        self.unreadable: dict[int, str] = {int(k): v for k, v in unreadable.items()}
        self._deleted = np.zeros(len(self._labels), dtype=bool)  # this process's own
        self._deleted[load_array(directory / "tombstones.npy")] = True  # deleted before it
        self._deleted_count = int(np.count_nonzero(self._deleted))

    # --- what SearchableIndex asks ------------------------------------------------------------
    @property
    def count(self) -> int:
        return len(self._labels) - self._deleted_count

    @property
    def _dead(self) -> int:
        return self._deleted_count

    def _row(self, fid: int) -> tuple[str, str] | None:
        if not 0 <= fid < len(self._labels) or self._deleted[fid]:
            return None
        return self._ids[fid].decode(), self._metadata[fid].decode()

    def matching(self, where: Filter) -> np.ndarray:
        return self._filters.mask(where) & ~self._deleted

    def _vectors(self, fids: np.ndarray) -> np.ndarray:
        if self._exact is None:
            return super()._vectors(fids)
        return np.array(self._exact[fids], dtype=np.float32)

    def _unfiltered(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        if not self._deleted_count:
            return self._hits(*self._index.search(queries, min(k, len(self._labels))), k)
        return self._selected(queries, k, ~self._deleted, self.count)

    # --- this process's deletions (callers hold the collection's write lock) ------------------
    def delete(self, label: int) -> None:
        """Its row changed or went away after the generation was written."""
        self.unreadable.pop(label, None)
        position = self._position(label)
        if position is not None and not self._deleted[position]:
            self._deleted[position] = True
            self._deleted_count += 1

    def _position(self, label: int) -> int | None:
        at = int(np.searchsorted(self._labels, label))
        return at if at < len(self._labels) and self._labels[at] == label else None

    # --- reads --------------------------------------------------------------------------------
    @property
    def deleted(self) -> int:
        return self._deleted_count

    def labels_matching(self, where: Filter) -> np.ndarray:
        """The labels of the live images matching `where`, ascending."""
        return np.asarray(self._labels[self.matching(where)])

    def vector_of(self, image_id: str) -> np.ndarray | None:
        position = find(self._ids, self._id_order, image_id.encode())
        if position is None or self._deleted[position]:
            return None
        return self._vectors(np.array([position], dtype=np.int64))[0]

    def deletions(self) -> np.ndarray:
        """A copy of this process's deletion flags (callers hold the read lock)."""
        return self._deleted.copy()

    @property
    def size(self) -> int:
        """Positions, deleted ones included."""
        return len(self._labels)

    def rows(self, skip: np.ndarray | None) -> Iterator[RowBatch]:
        """Its rows in label order and in chunks, but those flagged in `skip` (from
        `deletions`), to write the next generation. Needs no lock: the files never change."""
        for start in range(0, len(self._labels), BATCH):
            chunk = np.ones(min(BATCH, len(self._labels) - start), dtype=bool)
            if skip is not None:
                chunk = ~skip[start : start + BATCH]
            positions = np.flatnonzero(chunk) + start
            if not len(positions):
                continue
            yield RowBatch(
                seqs=np.asarray(self._labels[positions]),
                vectors=self._vectors(positions),
                ids=[self._ids[p].decode() for p in positions.tolist()],
                metadata=[self._metadata[p].decode() for p in positions.tolist()],
            )
