"""Provenance of a downloaded image: its real type, its size and hash, and, in
a PNG, the generation parameters written into the file.

The parts are pure functions over bytes and streams (`sniff`,
`image_size`, `parameters_text`, `itxt_chunk`, `insert_png_text`); one
function does the file work for the download path:

    line = ManifestLine(key=..., prompt=..., ...)          # without files yet
    saved = finalize_image(tmp, out_dir / stem, line, batch=name, index=i,
                           metadata=not no_metadata)
    # -> ImageFile(path=".../stem.png", sha256, bytes, width, height)

A PNG gets two iTXt chunks before its first IDAT, where image browsers look:

- `parameters`, AUTOMATIC1111's "infotext": the prompt, then one line of
  `Key: value` pairs separated by ", " (a value holding a comma, a quote or a
  newline is JSON-quoted, as A1111 does), which Infinite Image Browsing,
  Diffusion Toolkit and A1111's own "PNG Info" tab read;
- `batcher`, the manifest line as JSON, without its `files` (a file cannot
  hold its own hash) but with the batch, the image's number and the sha256
  and size of the bytes as downloaded, so the original can be proven by
  removing the two chunks.

The chunks are written byte by byte with their CRCs while the file streams
through; the pixels (every IDAT) and every other chunk stay bit-identical,
and a large file is never held in memory. JPEG and WebP files, and every
file when metadata is off, are moved into place untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Final, Protocol

from batcher.client.magic_hour import new_temporary
from batcher.errors import NotAnImageError, OutputError
from batcher.images import (
    COPY_BLOCK,
    PNG_SIGNATURE,
    SNIFF_BYTES,
    ImageKind,
    MalformedImageError,
    file_digest,
    image_size,
    read_exactly,
    sniff,
)
from batcher.run.manifest_line import ImageFile, ManifestLine

log = logging.getLogger(__name__)

EXTENSIONS: Final[dict[ImageKind, str]] = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
# Text chunks we own: an old one of these names is dropped, never duplicated.
OWN_KEYWORDS: Final = frozenset({"parameters", "batcher"})
_TEXT_CHUNKS: Final = frozenset({b"tEXt", b"zTXt", b"iTXt"})
_KEYWORD_PEEK: Final = 80  # a PNG keyword is 1-79 bytes, then a NUL


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


# --------------------------------------------------------------------------- the text


def parameters_text(line: ManifestLine, *, batch: str, index: int) -> str:
    """AUTOMATIC1111's infotext for image `index` (from 0) of the item in `line`."""
    fields = (
        ("Model", line.model),
        ("Resolution", line.resolution or "auto"),
        ("Aspect ratio", line.aspect_ratio),
        ("Tool", line.tool),
        ("Image", f"{index + 1} of {line.image_count}"),
        ("Project", line.project_id or ""),
        ("Batch", batch),
        ("Item", line.key),
    )
    settings = ", ".join(f"{name}: {_quote(value)}" for name, value in fields)
    return f"{line.prompt.strip()}\n{settings}"


def _quote(value: str) -> str:
    """A value as A1111's parser reads it back: JSON-quoted when it holds a
    separator (a comma), a newline or starts with a quote. Colons need no
    quotes: the parser takes everything up to the next comma."""
    if "," in value or "\n" in value or value.startswith('"'):
        return json.dumps(value, ensure_ascii=False)
    return value


def batcher_text(line: ManifestLine, *, batch: str, index: int, sha256: str, size: int) -> str:
    """The `batcher` chunk: the manifest line (without files), the batch, which
    image this is, and what was downloaded."""
    document = line.as_json()
    del document["files"]
    document["batch"] = batch
    document["image"] = index + 1
    document["downloaded"] = {"sha256": sha256, "bytes": size}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------- PNG chunks


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC over type and data."""
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def itxt_chunk(keyword: str, text: str) -> bytes:
    """An uncompressed iTXt chunk (PNG 1.2, 4.2.3.3): UTF-8 text, no language."""
    name = keyword.encode("latin-1")
    if not 1 <= len(name) <= 79 or b"\x00" in name:
        raise ValueError(f"not a PNG keyword: {keyword!r}")
    # keyword NUL, compression flag 0, method 0, language tag "" NUL,
    # translated keyword "" NUL, then the text.
    return png_chunk(b"iTXt", name + b"\x00\x00\x00\x00\x00" + text.encode("utf-8"))


def insert_png_text(src: IO[bytes], dst: Writable, chunks: Sequence[bytes]) -> None:
    """Copy the PNG in `src` to `dst` with `chunks` inserted before the first IDAT.

    Every other chunk is copied byte for byte, in blocks; text chunks whose
    keyword is one of ours (OWN_KEYWORDS) are dropped so that a file never
    says two things. Bytes after IEND, if any, are kept. Raises
    MalformedImageError on anything that is not a well-formed chunk stream.
    """
    if src.read(8) != PNG_SIGNATURE:
        raise MalformedImageError("not a PNG signature")
    dst.write(PNG_SIGNATURE)
    inserted = False
    first = True
    while True:
        header = read_exactly(src, 8)
        length, kind = struct.unpack(">I4s", header)
        if length > 0x7FFFFFFF:
            raise MalformedImageError("a PNG chunk of impossible length")
        if first and kind != b"IHDR":
            raise MalformedImageError("a PNG must start with its IHDR chunk")
        first = False
        if kind in (b"IDAT", b"IEND") and not inserted:
            for chunk in chunks:
                dst.write(chunk)
            inserted = True
        if kind in _TEXT_CHUNKS and _is_own_text(src, length):
            src.seek(length + 4, os.SEEK_CUR)
            continue
        dst.write(header)
        _copy(src, dst, length + 4)  # the data and its CRC
        if kind == b"IEND":
            break
    while block := src.read(COPY_BLOCK):
        dst.write(block)


def _is_own_text(src: IO[bytes], length: int) -> bool:
    """Whether the text chunk at `src` (its data next) has one of our keywords;
    leaves `src` where it was."""
    start = src.tell()
    peek = src.read(min(length, _KEYWORD_PEEK))
    src.seek(start)
    keyword, nul, _rest = peek.partition(b"\x00")
    return bool(nul) and keyword.decode("latin-1") in OWN_KEYWORDS


def _copy(src: IO[bytes], dst: Writable, count: int) -> None:
    while count > 0:
        block = src.read(min(count, COPY_BLOCK))
        if not block:
            raise MalformedImageError("the file ends inside a chunk")
        dst.write(block)
        count -= len(block)


class _HashingWriter:
    """A binary file that hashes and counts what is written through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)


# --------------------------------------------------------------------------- the file


def final_path(dest_stem: Path, kind: ImageKind) -> Path:
    """`dest_stem` with the extension of `kind` (added, never replacing a dot in the name)."""
    return dest_stem.with_name(dest_stem.name + EXTENSIONS[kind])


def finalize_image(
    download: Path,
    dest_stem: Path,
    line: ManifestLine,
    *,
    batch: str,
    index: int,
    metadata: bool = True,
) -> ImageFile:
    """Put the downloaded file `download` in place as `dest_stem` + its real extension.

    With `metadata` a PNG is rewritten once with its `parameters` and
    `batcher` chunks (through a temporary file beside it, fsynced, then
    renamed over the final name) and `download` is removed; anything else,
    or any file without `metadata`, is renamed into place untouched, so
    `download` must be in the same folder. A PNG whose chunks do not parse is
    kept as downloaded, with a warning: it was paid for.

    Raises NotAnImageError when the bytes are not a PNG, JPEG or WebP image
    (the download is left where it is, for a look), OutputError when the
    disk refuses.
    """
    try:
        with download.open("rb") as stream:
            kind = sniff(stream.read(SNIFF_BYTES))
            if kind is None:
                raise NotAnImageError(
                    download, "the downloaded file is not a PNG, JPEG or WebP", action="use"
                )
            stream.seek(0)
            try:
                width, height = image_size(stream, kind)
            except MalformedImageError as exc:
                raise NotAnImageError(
                    download, f"a broken {kind.upper()}: {exc}", action="use"
                ) from None
        final = final_path(dest_stem, kind)
        sha256, size = file_digest(download)
        if metadata and kind == "png":
            written = _write_with_provenance(download, final, line, batch, index, sha256, size)
            if written is not None:
                download.unlink()
                return ImageFile(str(final), written[0], written[1], width, height)
        download.replace(final)
    except OSError as exc:
        raise OutputError.from_os_error(dest_stem, exc, action="save") from None
    return ImageFile(str(final), sha256, size, width, height)


def _write_with_provenance(
    download: Path,
    final: Path,
    line: ManifestLine,
    batch: str,
    index: int,
    sha256: str,
    size: int,
) -> tuple[str, int] | None:
    """Write `final` as `download` plus our chunks; (sha256, size) of the result,
    or None (nothing written) when the PNG's chunk stream is malformed."""
    chunks = [
        itxt_chunk("parameters", parameters_text(line, batch=batch, index=index)),
        itxt_chunk(
            "batcher", batcher_text(line, batch=batch, index=index, sha256=sha256, size=size)
        ),
    ]
    fd, tmp_name = new_temporary(final.parent, prefix=f".{final.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw, download.open("rb") as src:
            out = _HashingWriter(raw)
            insert_png_text(src, out, chunks)
            raw.flush()
            os.fsync(raw.fileno())
        tmp.replace(final)
    except MalformedImageError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("%s: PNG kept as downloaded, without provenance: %s", download, exc)
        return None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out.digest.hexdigest(), out.size
