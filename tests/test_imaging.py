"""The one decode function, the image-folder loader, and training/serving decode parity."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.avif_size import coded_sizes
from service.config import Settings
from service.errors import PayloadTooLarge
from service.imaging import (
    ImageTooLargeError,
    InputSpec,
    UndecodableImageError,
    UnsupportedFormatError,
    decode_image,
    decoded_pixels,
)
from service.inputs import NamedImage, decode_all
from tests.hostile_corpus import corrupt_coded_data, encode, header_size
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
    serving = asyncio.run(
        decode_all(
            [NamedImage(p.name, p.read_bytes()) for p in files], RGB, Settings(max_pixels=10**6)
        )
    )
    assert len(serving) == len(training) == 6
    for served, trained in zip(serving, training, strict=True):
        np.testing.assert_array_equal(served, trained)


@pytest.mark.parametrize("size", [(1, 1), (64, 48), (300, 200)])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_avif_coded_sizes_are_read_from_the_av1_sequence_headers(
    size: tuple[int, int], mode: str
) -> None:
    data = encode(Image.new(mode, size, 100), "AVIF")
    assert set(coded_sizes(data)) == {size}  # colour, and alpha when there is one
    assert decoded_pixels(data) == size[0] * size[1]
    assert coded_sizes(header_size(data, 8, 8)) == coded_sizes(data)  # ispe does not count


def test_an_avif_whose_coded_picture_outgrows_its_header_is_refused_before_decoding() -> None:
    lie = header_size(encode(Image.new("L", (1200, 1000), 100), "AVIF", speed=10), 64, 64)
    assert Image.open(io.BytesIO(lie)).size == (64, 64)  # what Pillow believes
    with pytest.raises(ImageTooLargeError, match="coded at 1200×1000"):
        decode_image(lie, RGB, max_pixels=1_000_000)
    assert decode_image(lie, RGB, max_pixels=1_200_000).shape == (32, 32, 3)
    cut = lie[: lie.index(b"mdat") + 6]  # the sequence header is cut short
    with pytest.raises(UndecodableImageError):
        decode_image(cut, RGB)


def test_a_request_past_its_pixel_budget_is_refused_before_any_decoding() -> None:
    images = [NamedImage(f"i{i}", encode(Image.new("RGB", (100, 100)), "PNG")) for i in range(3)]
    limits = Settings(max_pixels_per_request=29_999)
    with pytest.raises(PayloadTooLarge, match="30000 pixels; the limit per request is 29999"):
        asyncio.run(decode_all(images, RGB, limits))
    assert len(asyncio.run(decode_all(images, RGB, Settings(max_pixels_per_request=30_000)))) == 3
