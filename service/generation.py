"""Generations: every collection's index written to immutable files at one log position, and
mapped read-only by every process of the data dir (mapped_index.py), so that the index's pages
exist once in memory however many workers serve it.

    DATA_DIR/generations/
      CURRENT           the newest generation's folder name, replaced atomically
      <seq>-<id>/       a generation: manifest.json, lock, a folder per collection (c0, c1, …)
      .write.lock       held by the one process writing a generation

- **Writing** goes into `tmp-<id>/`: every file is fsynced, the manifest (each file's size and
  CRC-32) comes last, then the folder is renamed and CURRENT replaced. A crash at any moment
  leaves the CURRENT before it, and a `tmp-` folder the next writer deletes.
- **Opening** checks the manifest against the model and every file against its size and (at
  start) its checksum. A missing or damaged generation is rebuilt from the store.
- **Retiring.** Each process holds a shared lock on the generation it maps. A writer deletes
  every other generation whose lock it can take exclusively: no process maps it any more.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
import zlib
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np
import orjson

from service.durable import fsync_dir, write_atomically
from service.file_lock import locked
from service.index import new_faiss_index
from service.index_options import IndexOptions
from service.mapped_index import SCATTERED_FILES, MappedIndex, write_part
from service.store.base import RowBatch

log = logging.getLogger(__name__)

FORMAT = 1
CHUNK = 1 << 22


class GenerationError(ValueError):
    """A generation is missing, damaged, or of another model or format."""


class OfAnotherModel(GenerationError):
    """The generation holds another model's vectors: not damaged, and not this view's."""


@dataclass(frozen=True)
class PartSource:
    """What one collection's part is written from (mapped_index.write_part)."""

    count: int  # its live rows, to choose the index kind
    rows: Iterable[RowBatch]  # in label order
    unreadable: dict[int, str]  # rows left out before: label → id
    extends: Path | None = None  # a part whose index this one extends: its rows come first
    dead: np.ndarray | None = None  # with `extends`: which of its rows were deleted
    lists_from: Path | None = None  # an ivf part whose lists an ivf part may take over


@dataclass
class Generation:
    name: str
    seq: int  # the last store change it includes
    parts: dict[str, MappedIndex]  # collection → its part
    _hold: BinaryIO  # open with a shared lock while this process maps it

    def release(self) -> None:
        """Let a writer retire it (searches still running keep their mapping)."""
        self._hold.close()


def checksum(path: Path) -> int:
    """A file's CRC-32. A file that searches read only here and there (SCATTERED_FILES) leaves
    the page cache again: reading it whole here would keep it there, mapped into every process's
    resident memory at the first touch (in folios of up to 2 MB)."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
        if path.name in SCATTERED_FILES:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return crc


class Generations:
    def __init__(self, data_dir: Path, dim: int, options: IndexOptions, model_version: str):
        self.data_dir, self.root = data_dir, data_dir / "generations"
        self.root.mkdir(parents=True, exist_ok=True)
        self.dim, self.options, self.model_version = dim, options, model_version

    def current(self) -> str | None:
        """The newest generation's name (one small read: followers call it every round)."""
        try:
            return (self.root / "CURRENT").read_text().strip() or None
        except FileNotFoundError:
            return None

    # --- opening ------------------------------------------------------------------------------
    def open_current(self, *, read_back: bool = True) -> Generation | None:
        """The newest generation, mapped; None when there is none or it is damaged (logged).
        Without `read_back`, file sizes are checked but not checksums: for a generation just
        written and fsynced, whose files a switch would otherwise read whole in every worker."""
        for _ in range(3):  # a writer may retire the one just named before it is locked
            name = self.current()
            if name is None:
                return None
            try:
                return self._open(name, read_back)
            except FileNotFoundError:
                continue
            except OfAnotherModel:
                return None  # written for the other side of a model switch (follower.py)
            except GenerationError as exc:
                log.warning("the index generation is unusable", extra={"why": str(exc)})
                return None
        return None

    def _open(self, name: str, read_back: bool) -> Generation:
        folder = self.root / name
        hold = open(folder / "lock", "rb")  # noqa: SIM115 (held until release())
        try:
            fcntl.flock(hold, fcntl.LOCK_SH)
            manifest = self._checked(folder, read_back)
            parts = {
                collection: MappedIndex(folder / part["folder"], part["kind"], self.options)
                for collection, part in manifest["collections"].items()
            }
        except BaseException:
            hold.close()
            raise
        return Generation(name, manifest["seq"], parts, hold)

    def _checked(self, folder: Path, read_back: bool) -> dict:
        try:
            manifest = orjson.loads((folder / "manifest.json").read_bytes())
        except orjson.JSONDecodeError as exc:
            raise GenerationError(f"{folder.name}: its manifest is damaged") from exc
        if manifest.get("model_version") != self.model_version:
            raise OfAnotherModel(f"{folder.name}: holds vectors of another model")
        if manifest.get("format") != FORMAT or manifest.get("dim") != self.dim:
            raise GenerationError(f"{folder.name}: written by another version of lookalike")
        for relative, (size, crc) in manifest["files"].items():
            path = folder / relative
            if path.stat().st_size != size or (read_back and checksum(path) != crc):
                raise GenerationError(f"{folder.name}: {relative} is damaged")
        return manifest

    # --- writing ------------------------------------------------------------------------------
    def writing(self, *, wait: bool) -> AbstractContextManager[bool]:
        """Hold the writer's lock; yields whether it was taken (at once, unless `wait`)."""
        return locked(self.root / ".write.lock", wait=wait)

    def write(self, seq: int, sources: dict[str, PartSource]) -> str:
        """Write a generation at log position `seq` and make it the newest; its name. Callers
        hold `writing`."""
        tmp = self.root / f"tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        collections = {}
        for i, (collection, source) in enumerate(sorted(sources.items())):
            folder = f"c{i}"
            (tmp / folder).mkdir()
            kind = self.options.kind_for(source.count)
            index: faiss.Index | None = None  # ivf: built over the rows once they are written
            if source.extends is not None:
                index = faiss.read_index(str(source.extends / "index.faiss"))
            elif kind != "ivf":
                index = new_faiss_index(self.dim, kind, self.options)
            trained = None
            if kind == "ivf" and source.lists_from is not None:
                mapped = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY  # its lists stay on disk
                trained = faiss.read_index(str(source.lists_from / "index.faiss"), mapped)
            write_part(tmp / folder, index, source.rows, source.unreadable, source.dead, trained)
            collections[collection] = {"folder": folder, "kind": kind}
        (tmp / "lock").touch()
        files = {
            str(path.relative_to(tmp)): [path.stat().st_size, checksum(path)]
            for path in sorted(tmp.rglob("*"))
            if path.is_file()
        }
        manifest = {
            "format": FORMAT,
            "seq": seq,
            "dim": self.dim,
            "model_version": self.model_version,
            "collections": collections,
            "files": files,
        }
        write_atomically(tmp / "manifest.json", orjson.dumps(manifest))
        for written in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            fsync_dir(written)
        name = f"{seq:012d}-{uuid.uuid4().hex[:8]}"
        tmp.rename(self.root / name)
        fsync_dir(self.root)
        write_atomically(self.root / "CURRENT", name.encode())
        return name

    def retire(self) -> None:
        """Delete every generation but the newest that no process maps, and what crashed
        writers left. Callers hold `writing`."""
        newest = self.current()
        for folder in self.root.iterdir():
            if not folder.is_dir() or folder.name == newest:
                continue
            if folder.name.startswith("tmp-") or not _mapped(folder):
                shutil.rmtree(folder, ignore_errors=True)
                log.info("index generation retired", extra={"generation": folder.name})


def _mapped(folder: Path) -> bool:
    try:
        handle = open(folder / "lock", "rb")  # noqa: SIM115
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False
