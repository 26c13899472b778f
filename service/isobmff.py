"""HEIF containers (HEIC and AVIF): the coded pictures a decoder decodes for the first image.

A HEIF file's primary item is either one coded picture or a derived image (a grid, overlay
or identity transform) made from others; an alpha channel is a further picture, an auxiliary
item of the primary. An image sequence instead holds tracks of samples. Each picture declares
its size (an ispe property, or the track header), and carries its coded bytes.

Reading is bounded: at most MAX_FIELDS header fields from one file, and MAX_ITEMS items for an
image, so a file of a million tiny boxes or references costs milliseconds, not seconds.

References: ISO/IEC 14496-12 (boxes, tracks, items) and ISO/IEC 23008-12 (HEIF).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

DERIVED = frozenset({"grid", "iovl", "iden"})  # made from the items they reference by 'dimg'
ALPHA = frozenset(
    {
        "urn:mpeg:mpegB:cicp:systems:auxiliary:alpha",
        "urn:mpeg:hevc:2015:auxid:1",
        "urn:mpeg:avc:2015:auxid:1",
    }
)
MAX_ITEMS = 1024  # per image and its alpha; libheif reads at most 1000 items in all
MAX_FIELDS = 20_000  # a 24 MP grid of 512-pixel tiles, as phones write, holds 2,700


class ContainerError(ValueError):
    """The container's boxes cannot be read."""


@dataclass(frozen=True)
class Picture:
    width: int  # as declared: the item's ispe, or the track header's; 0 when undeclared
    height: int
    data: bytes  # the coded picture: the item's data, or the track's first sample


@dataclass
class _Item:
    type: str = ""
    ispe: tuple[int, int] = (0, 0)
    aux_type: str = ""
    refs: dict[str, list[int]] = field(default_factory=dict)  # reference type -> item ids
    extents: list[tuple[int, int, int]] = field(default_factory=list)  # (method, at, length)


class _File:
    """A file's bytes, and how many header fields have been read from them."""

    def __init__(self, data: bytes) -> None:
        self.data, self.fields = data, 0

    def reader(self, start: int, end: int) -> _Reader:
        return _Reader(self, start, end)


class _Reader:
    def __init__(self, file: _File, at: int, end: int) -> None:
        self.file, self.at, self.end = file, at, end

    def uint(self, size: int) -> int:
        self.file.fields += 1
        if self.file.fields > MAX_FIELDS:
            raise ContainerError(f"the headers hold more than {MAX_FIELDS} fields")
        if self.at + size > self.end:
            raise ContainerError("a box is truncated")
        value = int.from_bytes(self.file.data[self.at : self.at + size], "big")
        self.at += size
        return value

    def fourcc(self) -> str:
        return self.uint(4).to_bytes(4, "big").decode("latin-1")


def major_brand(data: bytes) -> str:
    return data[8:12].decode("latin-1") if data[4:8] == b"ftyp" else ""


def item_pictures(data: bytes) -> list[Picture]:
    """The primary item's coded pictures and its alpha's, derived items resolved."""
    file = _File(data)
    meta = _find(file, 0, len(data), "meta")
    if meta is None:
        return []
    items, primary, idat = _items(file, *meta)
    alpha = [
        i
        for i, item in items.items()
        if primary in item.refs.get("auxl", []) and item.aux_type in ALPHA
    ]
    coded: dict[int, bytes] = {}  # each item's data, read once
    pictures, read = [], 0
    for item_id in [i for root in [primary, *alpha] for i in _coded(items, root)]:
        if item_id not in coded:
            coded[item_id] = _item_data(data, items[item_id], idat)
            read += len(coded[item_id])
            if read > len(data):
                raise ContainerError("the items' data repeats more than the file holds")
        pictures.append(Picture(*items[item_id].ispe, coded[item_id]))
    return pictures


def track_pictures(data: bytes) -> list[Picture]:
    """Each track's first sample, with the track's declared size."""
    file = _File(data)
    moov = _find(file, 0, len(data), "moov")
    if moov is None:
        return []
    pictures = []
    for kind, start, end in _boxes(file, *moov):
        if kind != "trak":
            continue
        tkhd = _find(file, start, end, "tkhd")
        stbl = _find(file, start, end, "mdia", "minf", "stbl")
        if tkhd is None or stbl is None:
            raise ContainerError("a track has no header or sample table")
        size = file.reader(max(tkhd[0], tkhd[1] - 8), tkhd[1])  # width, height: 16.16 fixed
        width, height = size.uint(4) >> 16, size.uint(4) >> 16
        at, length = _first_sample(file, *stbl)
        pictures.append(Picture(width, height, data[at : at + length]))
    return pictures


def _boxes(file: _File, start: int, end: int) -> Iterator[tuple[str, int, int]]:
    """(type, body start, body end) of each box between start and end."""
    while start + 8 <= end:
        box = file.reader(start, end)
        size, kind = box.uint(4), box.fourcc()
        if size == 1:
            size = box.uint(8)
        elif size == 0:
            size = end - start
        if size < box.at - start or start + size > end:
            raise ContainerError(f"box {kind!r} has an impossible size")
        yield kind, box.at, start + size
        start += size


def _find(file: _File, start: int, end: int, *path: str) -> tuple[int, int] | None:
    for kind in path:
        found = next(((s, e) for k, s, e in _boxes(file, start, end) if k == kind), None)
        if found is None:
            return None
        start, end = found
        if kind == "meta":
            start += 4  # a full box: version and flags
    return start, end


def _items(file: _File, start: int, end: int) -> tuple[dict[int, _Item], int, tuple[int, int]]:
    items: dict[int, _Item] = {}
    primary, idat = 0, (0, 0)
    properties: list[tuple[int, tuple[str, int, int]]] = []
    for kind, s, e in _boxes(file, start, end):
        if kind == "idat":
            idat = (s, e)
        elif kind == "iprp":
            properties = _properties(file, s, e)
        if kind not in ("pitm", "iinf", "iref", "iloc"):
            continue
        box = file.reader(s, e)
        version = box.uint(4) >> 24  # a full box: version and flags
        if kind == "pitm":
            primary = box.uint(2 if version == 0 else 4)
        elif kind == "iinf":
            box.uint(2 if version == 0 else 4)  # entry_count
            for _, infe_start, infe_end in _boxes(file, box.at, e):
                infe = file.reader(infe_start, infe_end)
                infe_version = infe.uint(4) >> 24
                if infe_version >= 2:  # older versions name no item type
                    item_id = infe.uint(2 if infe_version == 2 else 4)
                    infe.uint(2)  # item_protection_index
                    items.setdefault(item_id, _Item()).type = infe.fourcc()
        elif kind == "iref":
            for ref, ref_start, ref_end in _boxes(file, box.at, e):
                entry = file.reader(ref_start, ref_end)
                id_size = 2 if version == 0 else 4
                source = items.setdefault(entry.uint(id_size), _Item())
                targets = [entry.uint(id_size) for _ in range(entry.uint(2))]
                source.refs.setdefault(ref, []).extend(targets)
        else:
            _locations(box, version, items)
    for item_id, prop in properties:
        _apply_property(file, items.setdefault(item_id, _Item()), prop)
    if primary not in items:
        raise ContainerError("the primary item is missing")
    return items, primary, idat


def _locations(box: _Reader, version: int, items: dict[int, _Item]) -> None:
    sizes = box.uint(2)
    offset_size, length_size = sizes >> 12, sizes >> 8 & 15
    base_size, index_size = sizes >> 4 & 15, sizes & 15 if version in (1, 2) else 0
    for _ in range(box.uint(2 if version < 2 else 4)):
        item = items.setdefault(box.uint(2 if version < 2 else 4), _Item())
        method = box.uint(2) & 15 if version in (1, 2) else 0
        box.uint(2)  # data_reference_index
        base = box.uint(base_size)
        for _ in range(box.uint(2)):
            box.uint(index_size)
            at = base + box.uint(offset_size)
            item.extents.append((method, at, box.uint(length_size)))


def _properties(file: _File, start: int, end: int) -> list[tuple[int, tuple[str, int, int]]]:
    """(item id, property box) pairs: ipco lists the properties, ipma assigns them."""
    ipco = _find(file, start, end, "ipco")
    ipma = _find(file, start, end, "ipma")
    if ipco is None or ipma is None:
        return []
    boxes = list(_boxes(file, *ipco))
    table = file.reader(*ipma)
    version_flags = table.uint(4)
    pairs = []
    for _ in range(table.uint(4)):
        item_id = table.uint(2 if version_flags >> 24 == 0 else 4)
        for _ in range(table.uint(1)):
            index = table.uint(2) & 0x7FFF if version_flags & 1 else table.uint(1) & 0x7F
            if 0 < index <= len(boxes):
                pairs.append((item_id, boxes[index - 1]))
    return pairs


def _apply_property(file: _File, item: _Item, box: tuple[str, int, int]) -> None:
    kind, start, end = box
    if kind == "ispe":
        prop = file.reader(start, end)
        prop.uint(4)  # version, flags
        item.ispe = (prop.uint(4), prop.uint(4))
    elif kind == "auxC":
        item.aux_type = file.data[start + 4 : end].split(b"\0")[0].decode("latin-1")


def _coded(items: dict[int, _Item], root: int) -> list[int]:
    """The coded items an item is made of: itself, or what a derived item derives from."""
    coded: list[int] = []
    pending, visited = [root], 0
    while pending:
        item_id = pending.pop()
        if item_id not in items:
            raise ContainerError(f"item {item_id} is referenced but missing")
        if items[item_id].type in DERIVED:
            pending.extend(reversed(items[item_id].refs.get("dimg", [])))
        else:
            coded.append(item_id)
        visited += 1
        if visited + len(pending) > MAX_ITEMS:
            raise ContainerError(f"an image is made of more than {MAX_ITEMS} items, or of itself")
    return coded


def _item_data(data: bytes, item: _Item, idat: tuple[int, int]) -> bytes:
    chunks, total = [], 0
    for method, at, length in item.extents:
        if method not in (0, 1):
            raise ContainerError("item data by reference to other items is not supported")
        start, end = (0, len(data)) if method == 0 else idat
        at += start
        stop = end if length == 0 else at + length
        if not start <= at <= stop <= end:
            raise ContainerError("an item's data lies outside the file")
        total += stop - at
        if total > len(data):
            raise ContainerError("an item's data repeats more than the file holds")
        chunks.append(data[at:stop])
    return b"".join(chunks)


def _first_sample(file: _File, start: int, end: int) -> tuple[int, int]:
    """(file offset, length) of a track's first sample, from its sample table."""
    sizes = _find(file, start, end, "stsz")
    offset_size, chunks = 4, _find(file, start, end, "stco")
    if chunks is None:
        offset_size, chunks = 8, _find(file, start, end, "co64")
    if sizes is None or chunks is None:
        raise ContainerError("a track's sample table has no sizes or chunk offsets")
    stsz = file.reader(*sizes)
    stsz.uint(4)  # version, flags
    length, count = stsz.uint(4), stsz.uint(4)
    if count and not length:
        length = stsz.uint(4)
    offsets = file.reader(*chunks)
    offsets.uint(4)  # version, flags
    if not count or not offsets.uint(4):
        raise ContainerError("a track has no samples")
    at = offsets.uint(offset_size)
    if at + length > len(file.data):
        raise ContainerError("a track's first sample lies outside the file")
    return at, length
