"""AV1 bitstreams: how many pixels the frames of one sample decode to, from their headers.

An AVIF's declared size (its ispe box) does not bind the AV1 picture inside it: libavif
decodes whatever size the AV1 headers give, then scales the result to the declared size. So
the size is read here, from the bitstream, before anything is decoded. A frame is the sequence
header's maximum frame size, unless its frame header overrides that size; an override may
signal any size its field widths hold, and the decoder does not hold it to the maximum.

References: AV1 Bitstream & Decoding Process Specification, 5.3 (OBUs), 5.5 (sequence header
OBU) and 5.9 (uncompressed frame header).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

SEQUENCE_HEADER, FRAME_HEADER, FRAME = 1, 3, 6
KEY_FRAME, SWITCH_FRAME = 0, 3
SELECT = 2  # seq_force_screen_content_tools / seq_force_integer_mv: chosen per frame
MAX_OBUS = 1024  # per sample; a still image has a handful


class AV1Error(ValueError):
    """The AV1 headers cannot be read."""


class _Bits:
    def __init__(self, data: memoryview) -> None:
        self.data, self.at = data, 0

    def read(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.at >> 3
            if byte >= len(self.data):
                raise AV1Error("an AV1 header is truncated")
            value = value << 1 | self.data[byte] >> (7 - (self.at & 7)) & 1
            self.at += 1
        return value

    def uvlc(self) -> int:
        zeros = 0
        while not self.read(1):
            zeros += 1
            if zeros > 32:
                raise AV1Error("an AV1 variable-length number is too long")
        return (1 << 32) - 1 if zeros == 32 else self.read(zeros) + (1 << zeros) - 1


@dataclass(frozen=True)
class _Sequence:
    """What frame headers need from their sequence header (5.5.1)."""

    reduced_still_picture: bool
    width_bits: int
    height_bits: int
    max_width: int
    max_height: int
    presentation_time_bits: int  # temporal_point_info in shown frames; 0: absent
    frame_id_bits: int  # 0: no frame ids
    screen_content_tools: int
    integer_mv: int


def decoded_pixels(sample: bytes) -> int:
    """The pixels of all frames in an AV1 sample (an AVIF item's data, or a track's sample)."""
    sequence, first_header, pixels = None, b"", 0
    for obu_type, payload in _obus(memoryview(sample)):
        if obu_type == SEQUENCE_HEADER and not first_header:
            sequence, first_header = _sequence_header(_Bits(payload)), bytes(payload)
        elif obu_type == SEQUENCE_HEADER and payload != first_header:
            raise AV1Error("an AV1 sample holds two different sequence headers")
        elif obu_type in (FRAME_HEADER, FRAME):
            if sequence is None:
                raise AV1Error("an AV1 frame comes before any sequence header")
            pixels += _frame_pixels(_Bits(payload), sequence)
    return pixels


def _obus(data: memoryview) -> Iterator[tuple[int, memoryview]]:
    at, count = 0, 0
    while at < len(data):
        count += 1
        if count > MAX_OBUS:
            raise AV1Error(f"an AV1 sample holds more than {MAX_OBUS} OBUs")
        header = data[at]
        at += 2 if header & 0b100 else 1  # obu_extension_flag: one more header byte
        size = len(data) - at
        if header & 0b10:  # obu_has_size_field
            size, at = _leb128(data, at)
        if at + size > len(data):
            raise AV1Error("an AV1 OBU runs past the end of its data")
        yield header >> 3 & 0b1111, data[at : at + size]
        at += size


def _leb128(data: memoryview, at: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        if at + i >= len(data):
            raise AV1Error("an AV1 OBU size is truncated")
        value |= (data[at + i] & 0x7F) << (7 * i)
        if not data[at + i] & 0x80:
            return value, at + i + 1
    raise AV1Error("an AV1 OBU size is longer than 8 bytes")


def _sequence_header(bits: _Bits) -> _Sequence:
    bits.read(4)  # seq_profile, still_picture
    reduced = bool(bits.read(1))
    decoder_model = initial_display_delay = False
    delay_bits = presentation_time_bits = 0
    if reduced:
        bits.read(5)  # seq_level_idx[0]
    else:
        if bits.read(1):  # timing_info_present_flag
            bits.read(64)  # num_units_in_display_tick, time_scale
            equal_picture_interval = bits.read(1)
            if equal_picture_interval:
                bits.uvlc()  # num_ticks_per_picture_minus_1
            decoder_model = bool(bits.read(1))
            if decoder_model:
                delay_bits = bits.read(5) + 1
                bits.read(37)  # num_units_in_decoding_tick, buffer_removal_time_length_minus_1
                length = bits.read(5) + 1  # frame_presentation_time_length_minus_1
                presentation_time_bits = 0 if equal_picture_interval else length
        initial_display_delay = bool(bits.read(1))
        for _ in range(bits.read(5) + 1):  # operating points
            bits.read(12)  # operating_point_idc
            if bits.read(5) > 7:  # seq_level_idx
                bits.read(1)  # seq_tier
            if decoder_model and bits.read(1):
                bits.read(2 * delay_bits + 1)  # operating_parameters_info
            if initial_display_delay and bits.read(1):
                bits.read(4)  # initial_display_delay_minus_1
    width_bits, height_bits = bits.read(4) + 1, bits.read(4) + 1
    max_width, max_height = bits.read(width_bits) + 1, bits.read(height_bits) + 1
    frame_id_bits = 0
    if not reduced and bits.read(1):  # frame_id_numbers_present_flag
        delta_bits = bits.read(4) + 2
        frame_id_bits = bits.read(3) + 1 + delta_bits
    bits.read(3)  # use_128x128_superblock, enable_filter_intra, enable_intra_edge_filter
    screen_content_tools = integer_mv = SELECT
    if not reduced:
        bits.read(4)  # interintra and masked compound, warped motion, dual filter
        if bits.read(1):  # enable_order_hint
            bits.read(2)  # enable_jnt_comp, enable_ref_frame_mvs
        if not bits.read(1):  # seq_choose_screen_content_tools
            screen_content_tools = bits.read(1)
        if screen_content_tools and not bits.read(1):  # seq_choose_integer_mv
            integer_mv = bits.read(1)
    return _Sequence(
        reduced,
        width_bits,
        height_bits,
        max_width,
        max_height,
        presentation_time_bits,
        frame_id_bits,
        screen_content_tools,
        integer_mv,
    )


def _frame_pixels(bits: _Bits, seq: _Sequence) -> int:
    """The frame's size, read as far as frame_size_override_flag (5.9.2)."""
    maximum = seq.max_width * seq.max_height
    if seq.reduced_still_picture:
        return maximum  # one key frame, never overridden
    if bits.read(1):  # show_existing_frame: shows a decoded frame again
        return 0
    frame_type, show_frame = bits.read(2), bits.read(1)
    if show_frame and seq.presentation_time_bits:
        bits.read(seq.presentation_time_bits)  # temporal_point_info
    if not show_frame:
        bits.read(1)  # showable_frame
    if frame_type != SWITCH_FRAME and not (frame_type == KEY_FRAME and show_frame):
        bits.read(1)  # error_resilient_mode
    bits.read(1)  # disable_cdf_update
    screen_content_tools = seq.screen_content_tools
    if screen_content_tools == SELECT:
        screen_content_tools = bits.read(1)
    if screen_content_tools and seq.integer_mv == SELECT:
        bits.read(1)  # force_integer_mv
    bits.read(seq.frame_id_bits)  # current_frame_id
    if frame_type == SWITCH_FRAME or bits.read(1):  # frame_size_override_flag
        return (1 << seq.width_bits) * (1 << seq.height_bits)
    return maximum
