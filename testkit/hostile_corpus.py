"""A corpus of hostile and odd image files, generated with Pillow and by hand.

    python -m testkit.hostile_corpus OUT_DIR   # write the files out, to look at or fuzz with

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
import pillow_heif
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


# Headers that lie about what the decoder will make: each names a small size over a large
# picture, or more work than its pixels need. "bomb-" files are refused 413 from the headers.


def _av1_sequence_size(avif: bytes, width: int, height: int) -> bytes:
    """An AVIF (one item, as Pillow writes it) whose AV1 sequence header says width×height while
    its ispe still declares the encoded size. Its frame data stays the small picture's."""
    mdat = avif.index(b"mdat") + 4
    assert avif[mdat : mdat + 3] == b"\x12\x00\x0a"  # temporal delimiter, sequence header
    size = avif[mdat + 3]
    bits = "".join(f"{byte:08b}" for byte in avif[mdat + 4 : mdat + 4 + size])
    assert bits[4] == "1"  # reduced_still_picture_header: the size fields start at bit 10
    rest = bits[18 + int(bits[10:14], 2) + 1 + int(bits[14:18], 2) + 1 :]
    bits = bits[:10] + f"11111111{width - 1:016b}{height - 1:016b}" + rest.rstrip("0")[:-1] + "1"
    bits += "0" * (-len(bits) % 8)  # trailing bits: a one, then zeros to the byte
    header = int(bits, 2).to_bytes(len(bits) // 8, "big")
    out = bytearray(avif[: mdat + 3] + bytes([len(header)]) + header + avif[mdat + 4 + size :])
    for length_at in (mdat - 8, avif.index(b"iloc") + 22):  # the mdat box, the item's extent
        (length,) = struct.unpack_from(">I", out, length_at)
        struct.pack_into(">I", out, length_at, length + len(header) - size)
    return bytes(out)


def heic_grid_tiles(tile_width: int, tile_height: int) -> bytes:
    """A 128×128 HEIC grid of four tiles whose (shared) ispe says tile_width×tile_height."""
    pillow_heif.options.GRID_TILE_SIZE = 64
    try:
        grid = encode(Image.new("RGB", (128, 128), (30, 90, 60)), "HEIF")
    finally:
        pillow_heif.options.GRID_TILE_SIZE = 0
    tiles = grid.index(b"ispe", grid.index(b"ispe") + 4) + 8  # the grid's ispe comes first
    assert struct.unpack(">II", grid[tiles : tiles + 8]) == (64, 64)
    return grid[:tiles] + struct.pack(">II", tile_width, tile_height) + grid[tiles + 8 :]


def _gif_frame(left: int, top: int, width: int, height: int) -> bytes:
    """A GIF with a 4×4 logical screen whose one frame lies at left, top and is width×height."""
    gif = bytearray(encode(Image.new("P", (4, 4)), "GIF"))
    frame = gif.index(b"\x2c")  # image descriptor
    gif[frame + 1 : frame + 9] = struct.pack("<HHHH", left, top, width, height)
    return bytes(gif)


def _webp_vp8_size(webp: bytes, width: int, height: int) -> bytes:
    """A lossy WebP whose first VP8 bitstream, and its animation frame if any, say width×height,
    while the VP8X canvas keeps the encoded size."""
    out = bytearray(webp)
    vp8 = webp.index(b"VP8 ") + 8 + 6  # after the chunk header, frame tag and start code
    out[vp8 : vp8 + 4] = struct.pack("<HH", width, height)
    if b"ANMF" in webp:
        frame = webp.index(b"ANMF") + 8 + 6  # after the chunk header and the frame's offsets
        out[frame : frame + 6] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(
            3, "little"
        )
    return bytes(out)


def _tiled_tiff(width: int, height: int, tile: int) -> bytes:
    """A width×height deflated RGB TIFF made of one tile×tile tile, holding one grey row."""
    data = zlib.compress(b"\x80" * 3 * width)
    tags = [(256, width), (257, height), (258, 8), (259, 8), (262, 2), (277, 3)]
    tags += [(322, tile), (323, tile), (324, 8 + 2 + 12 * 10 + 4), (325, len(data))]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, 4, 1, v) for t, v in tags)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4 + data


def _tiff_rows_per_strip(rows: int) -> bytes:
    """A 64×48 deflated TIFF whose RowsPerStrip says far more rows than the image has."""
    tiff = bytearray(encode(_photo(), "TIFF", compression="tiff_deflate"))
    ifd = struct.unpack("<I", tiff[4:8])[0]
    for entry in range(ifd + 2, ifd + 2 + 12 * struct.unpack("<H", tiff[ifd : ifd + 2])[0], 12):
        if struct.unpack("<H", tiff[entry : entry + 2])[0] == 278:  # RowsPerStrip, as a LONG
            tiff[entry + 2 : entry + 12] = struct.pack("<HII", 4, 1, rows)
    return bytes(tiff)


def _png_with(*chunks: bytes, ihdr: tuple[int, int] | None = None) -> bytes:
    """An 8×8 PNG with the chunks added after its IHDR (and a second IHDR of that size)."""
    png = encode(Image.new("RGB", (8, 8), (200, 100, 0)), "PNG")
    extra = b"".join(chunks)
    if ihdr:
        extra = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", *ihdr, 8, 2, 0, 0, 0)) + extra
    return png[:33] + extra + png[33:]


def _jpeg_scans(extra: int) -> bytes:
    """A progressive JPEG whose last scan is repeated extra times: libjpeg decodes each."""
    jpeg = encode(Image.new("RGB", (1024, 1024), (120, 130, 140)), "JPEG", progressive=True)
    last_scan = jpeg[jpeg.rindex(b"\xff\xda") : -2]
    return jpeg[:-2] + last_scan * extra + jpeg[-2:]


def _jpeg_two_frames(first: tuple[int, int], second: tuple[int, int]) -> bytes:
    """A JPEG with two start-of-frame headers, of these sizes (Pillow reads the last)."""
    jpeg = encode(Image.new("RGB", (16, 16)), "JPEG")
    sof = jpeg.index(b"\xff\xc0")
    end = sof + 2 + struct.unpack(">H", jpeg[sof + 2 : sof + 4])[0]

    def frame(size: tuple[int, int]) -> bytes:
        return jpeg[sof : sof + 5] + struct.pack(">HH", size[1], size[0]) + jpeg[sof + 9 : end]

    return jpeg[:sof] + frame(first) + frame(second) + jpeg[end:]


def decoder_lies() -> list[Specimen]:
    avif, heic = encode(_photo((64, 64)), "AVIF"), encode(_photo((64, 64)), "HEIF")
    flat_heic = encode(Image.new("RGB", (256, 256), (90, 120, 200)), "HEIF")
    exif = Image.Exif()
    exif[0x010E] = "x"  # any Exif makes Pillow write the extended (VP8X) WebP header
    webp = encode(_photo((64, 64)), "WEBP", exif=exif.tobytes())
    frames = [_photo((64, 64)), Image.new("RGB", (64, 64))]
    animated_webp = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    icc = b"icc\x00\x00" + zlib.compress(b"\x00" * 1_000_000, 9)  # 1 MB when inflated
    big_icc = b"icc\x00\x00" + zlib.compress(b"\x00" * 20_000_000, 9)  # over Pillow's 1 MB
    text = b"comment\x00\x00" + zlib.compress(b"a" * 1_000_000, 9)
    return [
        Specimen("bomb-av1-size.avif", _av1_sequence_size(avif, 16384, 16384), 413),
        Specimen("lie-ispe.heic", header_size(flat_heic, 64, 64), 422),
        Specimen("bomb-ispe-sliver.heic", header_size(heic, 1, 40_000_000), 413),
        Specimen("bomb-grid-tiles.heic", heic_grid_tiles(16384, 16384), 413),
        Specimen("bomb-frame-outside-screen.gif", _gif_frame(0, 0, 8000, 8000), 413),
        Specimen("bomb-frame-offset.gif", _gif_frame(65000, 65000, 1, 1), 413),
        Specimen("lie-vp8-size.webp", _webp_vp8_size(webp, 16383, 16383), 422),
        Specimen("lie-anmf-size.webp", _webp_vp8_size(animated_webp, 16383, 16383), 422),
        Specimen("bomb-tile.tif", _tiled_tiff(64, 64, 16384), 413),
        Specimen("rows-per-strip.tif", _tiff_rows_per_strip(1 << 24), 200),
        Specimen("bomb-second-ihdr.png", _png_with(ihdr=(20000, 20000)), 413),
        Specimen("lie-iccp-repeated.png", _png_with(*[_png_chunk(b"iCCP", icc)] * 200), 422),
        Specimen("lie-iccp-inflates.png", _png_with(_png_chunk(b"iCCP", big_icc)), 422),
        Specimen("lie-ztxt-inflates.png", _png_with(*[_png_chunk(b"zTXt", text)] * 64), 422),
        Specimen("bomb-scans.jpg", _jpeg_scans(500), 413),
        Specimen("bomb-second-sof.jpg", _jpeg_two_frames((16, 16), (20000, 20000)), 413),
        Specimen("lie-first-sof.jpg", _jpeg_two_frames((20000, 20000), (16, 16)), 422),
    ]


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
        *decoder_lies(),
    ]


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")
    out.mkdir(parents=True, exist_ok=True)
    for specimen in specimens():
        (out / specimen.name).write_bytes(specimen.data)
    print(f"wrote {len(specimens())} files to {out}")
