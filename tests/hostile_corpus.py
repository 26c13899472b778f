"""A corpus of hostile and odd image files, generated with Pillow and by hand.

    python -m tests.hostile_corpus OUT_DIR     # write the files out, to look at or fuzz with

Each entry: a name, the bytes, and the status every image endpoint must answer for it: 200 for
odd-but-valid images, the specified 4xx otherwise. Never a 5xx, never a hang.
"""

from __future__ import annotations

import functools
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


# --- headers that lie about the size: each must be refused before the decoder allocates --------


def _lying_avif() -> bytes:
    """`ispe` says 64×64 over an AV1 picture coded at 7000×7000 (49 MP, over the 40 MP limit):
    698 bytes that libavif would decode in full."""
    flat = encode(Image.new("L", (7000, 7000), 128), "AVIF", quality=10, speed=10)
    return header_size(flat, 64, 64)


def _lying_heic() -> bytes:
    return header_size(encode(Image.new("RGB", (2048, 2048), (200, 30, 30)), "HEIF"), 64, 64)


def _lying_webp() -> bytes:
    """A VP8X canvas of 64×64 over a lossless 2048×2048 picture."""
    picture = encode(Image.new("RGB", (2048, 2048), (200, 30, 30)), "WEBP", lossless=True)
    canvas = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (63).to_bytes(3, "little") * 2
    body = b"WEBP" + canvas + picture[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _lying_gif() -> bytes:
    """A logical screen of 64×64 whose first frame says 8000×8000."""
    gif = bytearray(_gif_header_only(8000, 8000))
    gif[6:10] = struct.pack("<HH", 64, 64)
    return bytes(gif)


def _lying_apng() -> bytes:
    """A 64×64 canvas whose first animation frame (fcTL) is 8000×8000."""
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)
    frame = struct.pack(">IIIIIHHBB", 0, 8000, 8000, 0, 0, 1, 1, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"acTL", struct.pack(">II", 1, 0))
        + _png_chunk(b"fcTL", frame)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 65 * 64))
        + _png_chunk(b"IEND", b"")
    )


def _png_inflating(kind: bytes, megabytes: int) -> bytes:
    """A 64×64 PNG with a `kind` chunk (zTXt, or IDAT) that inflates to `megabytes` MB."""
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)
    bomb = zlib.compress(b"\x00" * (megabytes << 20), 9)
    chunks = [_png_chunk(b"IHDR", ihdr)]
    if kind == b"IDAT":
        chunks.append(_png_chunk(b"IDAT", bomb))
    else:
        chunks += [
            _png_chunk(kind, b"k\x00\x00" + bomb),
            _png_chunk(b"IDAT", zlib.compress(b"\x00" * 65 * 64)),
        ]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks) + _png_chunk(b"IEND", b"")


def _tiff(width: int, height: int, layout: list[tuple[int, int]], data: bytes) -> bytes:
    """A grey uncompressed-header, deflate-coded TIFF: `layout` holds the tags (strip or tile
    tags) beside the size; tag 273/324 (where the data is) is filled in."""
    tags = [(256, width), (257, height), (258, 8), (259, 8), (262, 1), (277, 1), *layout]
    data_at = 8 + 2 + 12 * len(tags) + 4
    entries = b"".join(
        struct.pack("<HHII", tag, 4, 1, data_at if tag in (273, 324) else value)
        for tag, value in tags
    )
    return b"II*\x00" + struct.pack("<IH", 8, len(tags)) + entries + bytes(4) + data


def _lying_tiff_tiles() -> bytes:
    """A 64×64 TIFF in one tile of 65536×65536: a decoder sizing its buffer by the tile would
    allocate 4 GB."""
    data = zlib.compress(bytes(1 << 16))
    return _tiff(64, 64, [(322, 65536), (323, 65536), (324, 0), (325, len(data))], data)


def _lying_tiff_strip() -> bytes:
    """A 64×64 TIFF whose one strip claims 2^30 rows and inflates to 16 MB."""
    data = zlib.compress(bytes(16 << 20), 9)
    return _tiff(64, 64, [(273, 0), (278, 1 << 30), (279, len(data))], data)


@functools.cache
def header_lies() -> tuple[Specimen, ...]:
    """One file per lie a header can tell; 413 when the real size is over the limit, 422 when
    the decoder refuses the inconsistency, 200 when it decodes only what the header allows."""
    return (
        Specimen("lie-ispe-av1.avif", _lying_avif(), 413),
        Specimen("lie-ispe.heic", _lying_heic(), 422),
        Specimen("lie-canvas.webp", _lying_webp(), 422),
        Specimen("lie-screen.gif", _lying_gif(), 413),
        Specimen("lie-frame.apng", _lying_apng(), 422),
        Specimen("lie-tile.tiff", _lying_tiff_tiles(), 422),
        Specimen("lie-strip.tiff", _lying_tiff_strip(), 200),
        Specimen("inflate-idat.png", _png_inflating(b"IDAT", 16), 200),
        Specimen("inflate-ztxt.png", _png_inflating(b"zTXt", 16), 422),
        Specimen("inflate-iccp.png", _png_inflating(b"iCCP", 16), 422),
    )


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
        *header_lies(),
    ]


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")
    out.mkdir(parents=True, exist_ok=True)
    for specimen in specimens():
        (out / specimen.name).write_bytes(specimen.data)
    print(f"wrote {len(specimens())} files to {out}")
