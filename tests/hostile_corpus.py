"""A corpus of hostile and odd image files, generated with Pillow and by hand.

    python -m tests.hostile_corpus OUT_DIR     # write the files out, to look at or fuzz with

Each entry: a name, the bytes, and the status every image endpoint must answer for it: 200 for
odd-but-valid images, the specified 4xx otherwise. Never a 5xx, never a hang.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import service.imaging  # noqa: F401  (registers the HEIF plugin that encode uses)


@dataclass(frozen=True)
class Specimen:
    name: str
    data: bytes
    status: int  # 200 = accepted; 413 too large; 415 format not allowed; 422 undecodable


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _photo(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _gif_header_only(width: int, height: int) -> bytes:
    gif = bytearray(encode(Image.new("P", (4, 4)), "GIF"))
    gif[6:10] = struct.pack("<HH", width, height)  # logical screen size
    frame = gif.index(b"\x2c")  # image descriptor
    gif[frame + 5 : frame + 9] = struct.pack("<HH", width, height)
    return bytes(gif)


def _animated_gif() -> bytes:
    frames = [Image.new("P", (32, 32), i * 40) for i in range(5)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(_photo((40, 20)), "JPEG", exif=exif)


def _palette_with_alpha_png() -> bytes:
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 1
    return encode(image, "PNG", transparency=1)


def corrupt_coded_data(data: bytes) -> bytes:
    """A HEIC or AVIF with the first 16 bytes of its coded picture (the mdat payload) inverted:
    the decoder cannot start. (Damage deeper in the payload decodes to garbled pixels: 200.)"""
    start = data.index(b"mdat") + 4
    return data[:start] + bytes(b ^ 0xFF for b in data[start : start + 16]) + data[start + 16 :]


def header_size(data: bytes, width: int, height: int) -> bytes:
    """A HEIC or AVIF whose header (its ispe box) declares width×height pixels."""
    at = data.index(b"ispe") + 8
    return data[:at] + struct.pack(">II", width, height) + data[at + 8 :]


def specimens() -> list[Specimen]:
    png, jpeg = encode(_photo(), "PNG"), encode(_photo(), "JPEG")
    gif, webp = encode(_photo(mode="P"), "GIF"), encode(_photo(), "WEBP")
    # 64×64: HEIC's coded size, so its ispe is the whole picture (no clean-aperture crop)
    heic, avif = encode(_photo((64, 64)), "HEIF"), encode(_photo((64, 64)), "AVIF")
    random_bytes = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return [
        Specimen("truncated.png", png[: len(png) // 2], 422),
        Specimen("truncated.jpg", jpeg[: len(jpeg) // 2], 422),
        Specimen("truncated.gif", gif[: len(gif) // 3], 422),
        Specimen("truncated.webp", webp[: len(webp) // 2], 422),
        Specimen("truncated.heic", heic[: len(heic) // 2], 422),
        Specimen("truncated.avif", avif[: len(avif) // 2], 422),
        Specimen("corrupt.heic", corrupt_coded_data(heic), 422),
        Specimen("corrupt.avif", corrupt_coded_data(avif), 422),
        Specimen("header-only.png", png[:33], 422),
        Specimen("zero-bytes.png", b"", 422),
        Specimen("random-bytes.bin", random_bytes, 422),
        Specimen("bomb-ihdr.png", _png_header_only(100_000, 100_000), 413),
        Specimen("bomb-dimensions.gif", _gif_header_only(65_535, 65_535), 413),
        # 8000×8000 is over the 40M-pixel limit; a decode of the damaged payload would be a 422
        Specimen("bomb-ispe.heic", corrupt_coded_data(header_size(heic, 8000, 8000)), 413),
        Specimen("bomb-ispe.avif", corrupt_coded_data(header_size(avif, 8000, 8000)), 413),
        Specimen("animated.gif", _animated_gif(), 200),
        Specimen("cmyk.jpg", encode(_photo(mode="CMYK"), "JPEG"), 200),
        Specimen(
            "sixteen-bit.png",
            encode(Image.fromarray(np.full((20, 20), 40000, np.uint16)), "PNG"),
            200,
        ),
        Specimen("palette-alpha.png", _palette_with_alpha_png(), 200),
        Specimen("exif-rotated.jpg", _exif_rotated_jpeg(), 200),
        Specimen("grayscale-alpha.png", encode(_photo(mode="LA"), "PNG"), 200),
        Specimen("polyglot-png-html.png", png + b"<html><script>alert(1)</script></html>", 200),
        Specimen("polyglot-zip.png", png + b"PK\x03\x04" + b"\x00" * 26, 200),
        Specimen(
            "image.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', 422
        ),
        Specimen("document.pdf", b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF", 422),
        Specimen("icon.ico", encode(_photo((16, 16)), "ICO"), 415),
        Specimen("one-pixel.png", encode(Image.new("L", (1, 1), 128), "PNG"), 200),
        Specimen("one-by-ten-thousand.png", encode(Image.new("L", (1, 10_000), 200), "PNG"), 200),
        Specimen("png-named.jpg", png, 200),
        Specimen(
            "tiff-multipage.tif",
            encode(_photo(), "TIFF", save_all=True, append_images=[_photo((64, 48), "L")]),
            200,
        ),
        Specimen("bmp.bmp", encode(_photo(), "BMP"), 200),
        Specimen("photo.heic", heic, 200),
        Specimen("photo.avif", avif, 200),
    ]


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")
    out.mkdir(parents=True, exist_ok=True)
    for specimen in specimens():
        (out / specimen.name).write_bytes(specimen.data)
    print(f"wrote {len(specimens())} files to {out}")
