"""What decoding an image costs, read from its headers before anything is decoded.

Pixels: Pillow's own decoders (PNG, JPEG, GIF, WebP, BMP, striped TIFF) make the size that
Pillow reports, and refuse data that disagrees with it (testkit/hostile_corpus.py tries each
lie). Three can make more than the reported size, so their headers are read here:

- AVIF: libavif decodes each AV1 picture at the size its bitstream gives, whatever the ispe
  box declares, and then scales it to the declared size. An alpha channel and grid tiles are
  pictures of their own. Each counts as the larger of its AV1 frames and its declared size.
- HEIF: libheif lets the decoder make up to 64 rows and columns (HEVC's largest coding unit)
  more than a picture's declared size before it refuses the mismatch, so each picture of the
  primary image (grid tiles, alpha) counts with that margin.
- Tiled TIFF: libtiff decodes a whole tile at a time, and a tile may be declared far larger
  than the image.

Work before the pixels: a progressive JPEG is decoded once more for each of its scans, and a
PNG's colour profile (iCCP) is inflated whenever Pillow meets one; neither is limited in number.
"""

from __future__ import annotations

from PIL import Image, TiffImagePlugin

from service import av1, isobmff

HEIF_MARGIN = 64  # libheif: a decoded picture may exceed its ispe by one coding unit
TILE_WIDTH, TILE_LENGTH = 322, 323  # TIFF tags
JPEG_START_OF_SCAN = b"\xff\xda"  # entropy-coded data escapes 0xFF, so this is only a marker
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pixels(image: Image.Image, data: bytes) -> int:
    """The pixels that decoding the (opened) image makes: its size, or more where its codec
    decodes larger pictures. Raises ValueError for headers that cannot be read."""
    width, height = image.size
    if image.format == "AVIF":
        coded = sum(
            max(av1.decoded_pixels(picture.data), picture.width * picture.height)
            for picture in _avif_pictures(data)
        )
    elif image.format == "HEIF":
        coded = sum(
            (picture.width + HEIF_MARGIN) * (picture.height + HEIF_MARGIN)
            for picture in _declared(isobmff.item_pictures(data))
        )
    elif isinstance(image, TiffImagePlugin.TiffImageFile):
        coded = image.tag_v2.get(TILE_WIDTH, 0) * image.tag_v2.get(TILE_LENGTH, 0)
    else:
        coded = 0
    return max(width * height, coded)


def jpeg_scans(data: bytes) -> int:
    return data.count(JPEG_START_OF_SCAN)


def png_profiles(data: bytes) -> int:
    """How many iCCP chunks a PNG holds (0 for other files)."""
    count, at = 0, len(PNG_SIGNATURE)
    if not data.startswith(PNG_SIGNATURE) or b"iCCP" not in data:  # the common case, in C
        return 0
    while at + 8 <= len(data):
        count += data[at + 4 : at + 8] == b"iCCP"
        at += 12 + int.from_bytes(data[at : at + 4], "big")  # length, type, data, CRC
    return count


def _avif_pictures(data: bytes) -> list[isobmff.Picture]:
    """libavif's choice: an image sequence's tracks when the brand is 'avis', the primary
    item when it is 'avif', otherwise the tracks when there are any."""
    brand = isobmff.major_brand(data)
    tracks = [] if brand == "avif" else isobmff.track_pictures(data)
    return tracks if brand == "avis" or tracks else isobmff.item_pictures(data)


def _declared(pictures: list[isobmff.Picture]) -> list[isobmff.Picture]:
    # libheif cannot bound what it decodes for a picture without a declared size
    if any(not picture.width or not picture.height for picture in pictures):
        raise isobmff.ContainerError("a picture declares no size (it has no ispe property)")
    return pictures
