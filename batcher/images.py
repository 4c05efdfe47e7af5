"""What image bytes are: their kind from the magic bytes, their size from the
headers alone, their digest. Pure reading, shared by the download path
(batcher.run.provenance) and the reports that look at saved files
(batcher.reports.thumbnails); nothing here writes.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import IO, Final, Literal

ImageKind = Literal["png", "jpeg", "webp"]

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
SNIFF_BYTES: Final = 12  # enough for every signature we know
COPY_BLOCK: Final = 1 << 20
# JPEG start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class MalformedImageError(ValueError):
    """The bytes start like an image of a kind but do not follow its structure."""


# --------------------------------------------------------------------------- reading


def sniff(head: bytes) -> ImageKind | None:
    """The image kind the first bytes announce; None for anything else."""
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def image_size(stream: IO[bytes], kind: ImageKind) -> tuple[int, int]:
    """(width, height) from the headers alone, `stream` at the file's start.

    Raises MalformedImageError when the headers are not what `kind` requires.
    """
    if kind == "png":
        return _png_size(stream)
    if kind == "jpeg":
        return _jpeg_size(stream)
    return _webp_size(stream)


def read_exactly(stream: IO[bytes], count: int) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise MalformedImageError("the file ends too early")
    return data


def _png_size(stream: IO[bytes]) -> tuple[int, int]:
    head = read_exactly(stream, 8 + 8 + 8)
    if head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise MalformedImageError("a PNG must start with its IHDR chunk")
    width, height = struct.unpack(">II", head[16:24])
    if not width or not height:
        raise MalformedImageError("a PNG of zero width or height")
    return width, height


def _jpeg_size(stream: IO[bytes]) -> tuple[int, int]:
    if read_exactly(stream, 2) != b"\xff\xd8":
        raise MalformedImageError("a JPEG must start with SOI")
    while True:
        byte = read_exactly(stream, 1)
        if byte != b"\xff":
            raise MalformedImageError("a JPEG marker was expected")
        marker = read_exactly(stream, 1)[0]
        while marker == 0xFF:  # fill bytes before a marker
            marker = read_exactly(stream, 1)[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            continue
        if marker in (0xD9, 0xDA):
            raise MalformedImageError("a JPEG without a frame header")
        (length,) = struct.unpack(">H", read_exactly(stream, 2))
        if length < 2:
            raise MalformedImageError("a JPEG segment of impossible length")
        if marker in _SOF_MARKERS:
            segment = read_exactly(stream, 5)
            height, width = struct.unpack(">HH", segment[1:5])
            if not width or not height:
                raise MalformedImageError("a JPEG of zero width or height")
            return width, height
        stream.seek(length - 2, os.SEEK_CUR)


def _webp_size(stream: IO[bytes]) -> tuple[int, int]:
    head = read_exactly(stream, 12 + 8)
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        raise MalformedImageError("a WebP must be a RIFF WEBP file")
    fourcc = head[12:16]
    if fourcc == b"VP8 ":  # lossy: a frame tag, a start code, then 14-bit sizes
        frame = read_exactly(stream, 10)
        if frame[3:6] != b"\x9d\x01\x2a":
            raise MalformedImageError("a lossy WebP without its start code")
        width, height = struct.unpack("<HH", frame[6:10])
        return width & 0x3FFF, height & 0x3FFF
    if fourcc == b"VP8L":  # lossless: a signature byte, then 14-bit sizes minus one
        data = read_exactly(stream, 5)
        if data[0] != 0x2F:
            raise MalformedImageError("a lossless WebP without its signature")
        bits = int.from_bytes(data[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if fourcc == b"VP8X":  # extended: flags, then 24-bit canvas sizes minus one
        data = read_exactly(stream, 10)
        return int.from_bytes(data[4:7], "little") + 1, int.from_bytes(data[7:10], "little") + 1
    raise MalformedImageError(f"a WebP with an unknown first chunk {fourcc!r}")


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        while block := stream.read(COPY_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size
