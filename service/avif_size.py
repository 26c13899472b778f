"""The size an AVIF file's AV1 pictures really decode to, read before anything is decoded.

An AVIF states its size twice: in the `ispe` property, which Pillow reports, and in each AV1
picture's sequence header, which the decoder obeys. They can disagree: a 3 kB file whose `ispe`
says 64×64 over a 16384×16384 coded picture makes libavif allocate and decode 268 MP. This
module follows the container to every item's bitstream (`iloc`) and reads `max_frame_width` and
`max_frame_height` from its sequence header OBU (AV1 spec 5.5), so the pixel limit can be judged
on what would really be decoded.

Only what the limit needs is parsed; a file this reader cannot follow is left to the decoder,
which refuses what it cannot decode.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

OBU_SEQUENCE_HEADER = 1
CONTAINERS = {b"meta": 4, b"iprp": 0, b"ipco": 0}  # boxes to descend into: header bytes to skip


class MalformedAVIF(ValueError):
    """The container or a sequence header is cut short or inconsistent."""


def coded_sizes(data: bytes) -> list[tuple[int, int]]:
    """(width, height) of every AV1 picture the file's items hold, by their sequence headers."""
    sizes = []
    for offset, length in _item_extents(data):
        size = _sequence_header_size(data[offset : offset + length])
        if size is not None:
            sizes.append(size)
    return sizes


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the ISOBMFF boxes in data[start:end]."""
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            if at + 16 > end:
                raise MalformedAVIF("a box's 64-bit size is cut short")
            size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            raise MalformedAVIF(f"box {kind!r} runs past its container")
        yield kind, at + header, at + size
        at += size


def _find(data: bytes, kind: bytes, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """The payload of the first box of `kind`, searching into meta/iprp/ipco."""
    for found, payload, stop in _boxes(data, start, len(data) if end is None else end):
        if found == kind:
            return payload, stop
        if found in CONTAINERS:
            try:
                return _find(data, kind, payload + CONTAINERS[found], stop)
            except KeyError:
                continue
    raise KeyError(kind)


def _item_extents(data: bytes) -> list[tuple[int, int]]:
    """(file offset, length) of the first extent of every item in `iloc` (ISO 14496-12 8.11.3)."""
    try:
        start, end = _find(data, b"iloc")
    except KeyError:
        return []
    reader = _Reader(data, start, end)
    version = reader.bits(8)
    reader.bits(24)  # flags
    offset_size, length_size = reader.bits(4), reader.bits(4)
    base_offset_size, index_size = reader.bits(4), reader.bits(4)
    item_count = reader.bits(16 if version < 2 else 32)
    extents = []
    for _ in range(item_count):
        reader.bits(16 if version < 2 else 32)  # item_ID
        method = reader.bits(16) & 0xF if version in (1, 2) else 0
        reader.bits(16)  # data_reference_index
        base = reader.bits(8 * base_offset_size)
        first: tuple[int, int] | None = None
        for _ in range(reader.bits(16)):
            if version in (1, 2):
                reader.bits(8 * index_size)
            offset, length = reader.bits(8 * offset_size), reader.bits(8 * length_size)
            first = first or (base + offset, length or len(data))
        if method == 0 and first is not None:  # in the file (1: in idat, small; 2: derived)
            extents.append(first)
    return extents


def _sequence_header_size(stream: bytes) -> tuple[int, int] | None:
    """max_frame_width × max_frame_height from the first sequence header OBU, if any."""
    at = 0
    while at < len(stream):
        header = stream[at]
        if header & 0x80:  # obu_forbidden_bit: not an AV1 bitstream (Exif, XMP, …)
            return None
        kind, has_extension, has_size = (header >> 3) & 0xF, header & 0x4, header & 0x2
        at += 2 if has_extension else 1
        if not has_size:
            size = len(stream) - at
        else:
            size, at = _leb128(stream, at)
        if kind == OBU_SEQUENCE_HEADER:
            return _frame_size(_Reader(stream, at, min(at + size, len(stream))))
        if kind not in (2, 15):  # only a temporal delimiter or padding may come first
            return None
        at += size
    return None


def _frame_size(r: _Reader) -> tuple[int, int]:
    """AV1 spec 5.5.1, sequence_header_obu(), up to max_frame_height_minus_1."""
    r.bits(3)  # seq_profile
    r.bits(1)  # still_picture
    if r.bits(1):  # reduced_still_picture_header
        r.bits(5)  # seq_level_idx[0]
    else:
        decoder_model_info = False
        buffer_delay_length = 0
        if r.bits(1):  # timing_info_present_flag
            r.bits(32)  # num_units_in_display_tick
            r.bits(32)  # time_scale
            if r.bits(1):  # equal_picture_interval
                r.uvlc()  # num_ticks_per_picture_minus_1
            decoder_model_info = bool(r.bits(1))
            if decoder_model_info:
                buffer_delay_length = r.bits(5) + 1
                r.bits(32)  # num_units_in_decoding_tick
                r.bits(5)  # buffer_removal_time_length_minus_1
                r.bits(5)  # frame_presentation_time_length_minus_1
        initial_display_delay = r.bits(1)
        for _ in range(r.bits(5) + 1):  # operating points
            r.bits(12)  # operating_point_idc
            if r.bits(5) > 7:  # seq_level_idx
                r.bits(1)  # seq_tier
            if decoder_model_info and r.bits(1):
                r.bits(2 * buffer_delay_length + 1)
            if initial_display_delay and r.bits(1):
                r.bits(4)
    width_bits, height_bits = r.bits(4) + 1, r.bits(4) + 1
    return r.bits(width_bits) + 1, r.bits(height_bits) + 1


def _leb128(data: bytes, at: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        if at >= len(data):
            raise MalformedAVIF("an OBU size is cut short")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, at
    raise MalformedAVIF("an OBU size is longer than 8 bytes")


class _Reader:
    """Big-endian bits of data[start:end]."""

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data, self.bit, self.end = data, start * 8, end * 8

    def bits(self, count: int) -> int:
        if self.bit + count > self.end:
            raise MalformedAVIF("a header is cut short")
        value = 0
        for _ in range(count):
            byte = self.data[self.bit >> 3]
            value = (value << 1) | ((byte >> (7 - (self.bit & 7))) & 1)
            self.bit += 1
        return value

    def uvlc(self) -> int:
        zeros = 0
        while not self.bits(1):
            zeros += 1
            if zeros >= 32:
                return (1 << 32) - 1
        return self.bits(zeros) + (1 << zeros) - 1
