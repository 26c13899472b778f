"""The one decode function, the image-folder loader, and training/serving decode parity."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service import av1, isobmff
from service.errors import PayloadTooLarge
from service.imaging import (
    ImageError,
    ImageTooLargeError,
    InputSpec,
    UndecodableImageError,
    UnsupportedFormatError,
    decode_image,
)
from service.inputs import NamedImage, decode_all
from testkit.hostile_corpus import (
    Specimen,
    corrupt_coded_data,
    decoder_lies,
    encode,
    header_size,
    heic_grid_tiles,
)
from training.data import load_image_folder

GRAY = InputSpec(channels=1, height=28, width=28, colour_mode="L")
RGB = InputSpec(channels=3, height=32, width=32, colour_mode="RGB")


def _gradient(size: tuple[int, int] = (40, 30)) -> Image.Image:
    x = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :].repeat(size[1], 0)
    return Image.fromarray(np.stack([x, x[::-1], np.full_like(x, 90)], axis=2), "RGB")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF"])
def test_every_allowed_format_decodes_to_the_model_shape(fmt: str) -> None:
    pixels = decode_image(encode(_gradient(), fmt), RGB)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8


def test_disallowed_format_and_garbage_are_refused_clearly() -> None:
    with pytest.raises(UnsupportedFormatError, match="ICO"):
        decode_image(encode(_gradient((16, 16)), "ICO"), GRAY)
    with pytest.raises(UndecodableImageError):
        decode_image(b"%PDF-1.4 not an image", GRAY)
    with pytest.raises(UndecodableImageError, match="empty"):
        decode_image(b"", GRAY)


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = encode(Image.new("L", (300, 300)), "PNG")
    with pytest.raises(ImageTooLargeError, match="90000 pixels"):
        decode_image(data, GRAY, max_pixels=50_000)


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
@pytest.mark.parametrize(
    ("side", "limit"), [(8000, "the limit is 40000000"), (15000, "decompression bomb")]
)
def test_heif_and_avif_pixel_limits_come_from_the_header(fmt: str, side: int, limit: str) -> None:
    # The coded picture is damaged, so a decode would fail as undecodable: the refusal that
    # comes instead is judged from the header alone (ours at 40M pixels, Pillow's bomb check).
    data = corrupt_coded_data(header_size(encode(Image.new("RGB", (64, 64)), fmt), side, side))
    with pytest.raises(ImageTooLargeError, match=limit):
        decode_image(data, GRAY)


STATUS = {ImageTooLargeError: 413, UndecodableImageError: 422, UnsupportedFormatError: 415}


@pytest.mark.parametrize("specimen", decoder_lies(), ids=lambda s: s.name)
def test_a_header_that_lies_about_the_decode_is_refused(specimen: Specimen) -> None:
    # Every "bomb-" file is refused from its headers (413); the other lies are refused by the
    # decoder itself before it allocates (422), or do no harm (200).
    try:
        decode_image(specimen.data, GRAY)
        status = 200
    except ImageError as exc:
        status = STATUS[type(exc)]
    assert status == specimen.status
    assert specimen.status == 413 or not specimen.name.startswith("bomb-")


def test_an_avif_counts_the_av1_picture_it_holds_not_the_size_it_declares() -> None:
    # A real 1024×1024 picture behind a 64×64 ispe: libavif would decode all of it.
    data = header_size(encode(Image.new("L", (1024, 1024), 90), "AVIF", speed=10), 64, 64)
    with pytest.raises(ImageTooLargeError, match="64×64, but its AVIF data decodes to 1048576"):
        decode_image(data, GRAY, max_pixels=1_000_000)
    assert decode_image(data, GRAY).shape == (28, 28, 1)  # within the default limit: decoded


def _obu(kind: int, bits: str) -> bytes:
    bits = bits.replace(" ", "") + "1"  # trailing bits: a one, then zeros to the byte
    bits += "0" * (-len(bits) % 8)
    payload = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return bytes([kind << 3 | 0b10, len(payload)]) + payload


@pytest.mark.parametrize(("override", "pixels"), [("0", 64 * 48), ("1", 2**14 * 2**14)])
def test_an_av1_frame_that_overrides_its_size_counts_the_largest_it_can_say(
    override: str, pixels: int
) -> None:
    # dav1d decodes an overriding frame at any size its fields hold, beyond the maximum.
    sequence = (
        "000 0 0"  # profile 0, not a still picture, full header
        " 0 0 00000 000000000000 00000"  # no timing or delays, one operating point
        f" 1101 1101 {63:014b} {47:014b}"  # 14-bit size fields, at most 64×48
        " 0 000 0000 0 1 1"  # no frame ids, tools or order hints; the rest chosen per frame
    )
    frame = f"0 00 1 0 0 {override}"  # a shown key frame, no screen content tools, override?
    sample = _obu(av1.SEQUENCE_HEADER, sequence) + _obu(av1.FRAME, frame + "0" * 32)
    assert av1.decoded_pixels(sample) == pixels


def test_heif_headers_are_read_within_bounds() -> None:
    grid = heic_grid_tiles(64, 64)
    tiles = grid.index(b"dimg") + 8  # past the box header, the grid's id and the count
    itself = grid[:tiles] + struct.pack(">4H", 1, 1, 1, 1) + grid[tiles + 8 :]
    with pytest.raises(isobmff.ContainerError, match="more than 1024 items, or of itself"):
        isobmff.item_pictures(itself)
    free = b"\x00\x00\x00\x08free" * 30_000
    boxes = struct.pack(">I4s4x", 12 + len(free), b"meta") + free
    with pytest.raises(isobmff.ContainerError, match="more than 20000 fields"):
        isobmff.item_pictures(grid[: grid.index(b"meta") - 4] + boxes)


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_truncated_or_corrupt_heif_and_avif_are_undecodable(fmt: str) -> None:
    data = encode(_gradient((64, 64)), fmt)
    for damaged in (data[: len(data) // 2], corrupt_coded_data(data)):
        with pytest.raises(UndecodableImageError):
            decode_image(damaged, GRAY)


@pytest.mark.parametrize("fmt", ["JPEG", "AVIF", "HEIF"])
def test_exif_orientation_is_applied(fmt: str) -> None:
    tall = Image.new("L", (20, 40), 0)
    tall.paste(255, (0, 0, 20, 10))  # white band at the top
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    data = encode(tall, fmt, exif=exif.tobytes(), quality=95)
    wide = InputSpec(channels=1, height=20, width=40, colour_mode="L")
    pixels = decode_image(data, wide)[:, :, 0]
    assert pixels[:, -5:].mean() > 200 and pixels[:, :5].mean() < 50  # the band is now on the right


@pytest.mark.parametrize("fmt", ["PNG", "AVIF", "HEIF"])
def test_alpha_is_flattened_onto_white(fmt: str) -> None:
    clear = Image.new("RGBA", (28, 28), (0, 0, 0, 0))
    assert decode_image(encode(clear, fmt), GRAY).min() == 255


def test_sixteen_bit_png_keeps_its_range() -> None:
    deep = Image.fromarray(np.full((28, 28), 65535, dtype=np.uint16))
    assert decode_image(encode(deep, "PNG"), GRAY).min() == 255


def _write_folder(root: Path) -> None:
    (root / "shirts" / "summer").mkdir(parents=True)
    (root / "shoes").mkdir()
    _gradient().save(root / "shirts" / "a.png")
    _gradient().save(root / "shirts" / "summer" / "b.jpg")
    _gradient().convert("L").save(root / "shoes" / "c.webp")
    _gradient().save(root / "shoes" / "d.bmp")
    _gradient().save(root / "shirts" / "e.heic")
    _gradient().save(root / "shoes" / "f.avif")
    (root / "shoes" / "corrupt.png").write_bytes(encode(_gradient(), "PNG")[:60])
    (root / "shoes" / "notes.txt").write_text("not an image")


def test_folder_loader_reads_mixed_nested_files_and_skips_bad_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_folder(tmp_path)
    data = load_image_folder(tmp_path, RGB)
    assert data.images.shape == (6, 32, 32, 3)
    assert data.skipped == 2
    assert data.class_names == ("shirts", "shoes")
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert sum("skipped 2 of 8 files" in r.message for r in caplog.records) == 1


def test_folder_without_subfolders_has_no_labels(tmp_path: Path) -> None:
    _gradient().save(tmp_path / "a.png")
    _gradient().save(tmp_path / "b.png")
    data = load_image_folder(tmp_path, GRAY)
    assert data.labels is None and len(data) == 2


def test_training_and_serving_decode_a_file_identically(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    training = load_image_folder(tmp_path, RGB).images
    files = sorted(
        p
        for p in tmp_path.rglob("*")
        if p.suffix in (".png", ".jpg", ".webp", ".bmp", ".heic", ".avif")
        and p.name != "corrupt.png"
    )
    named = [NamedImage(p.name, p.read_bytes()) for p in files]
    serving = asyncio.run(decode_all(named, RGB, max_pixels=10**6, max_request_pixels=10**7))
    assert len(serving) == len(training) == 6
    for served, trained in zip(serving, training, strict=True):
        np.testing.assert_array_equal(served, trained)


def test_a_request_over_its_pixel_budget_is_refused_before_any_decode() -> None:
    images = [NamedImage(f"images[{i}]", encode(_gradient((100, 100)), "PNG")) for i in range(3)]
    assert len(asyncio.run(decode_all(images, GRAY, max_pixels=10**4, max_request_pixels=30_000)))
    with pytest.raises(
        PayloadTooLarge, match="3 images decode to 30000 pixels together; the budget"
    ):
        asyncio.run(decode_all(images, GRAY, max_pixels=10**4, max_request_pixels=29_999))
    bomb = next(s for s in decoder_lies() if s.name == "bomb-tile.tif")
    with pytest.raises(
        PayloadTooLarge, match=r"images\[1\] \(bomb\): image is 64×64, but its TIFF"
    ):
        asyncio.run(
            decode_all(
                [images[0], NamedImage("images[1] (bomb)", bomb.data)],
                GRAY,
                max_pixels=10**4,
                max_request_pixels=10**9,
            )
        )
