"""Thumbnails of a batch's images in `<batch folder>/.thumbs/`.

Each thumbnail is named after what it shows: a hash of the source's name,
size and modification time. An unchanged image keeps its thumbnail (a stat,
no decoding); a changed one gets a new name, so it is made again and the
page can never show a stale one. Thumbnails nobody refers to any more are
removed. Making them runs on a few threads: Pillow decodes and resizes
without holding the GIL.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from PIL import Image, UnidentifiedImageError

from batcher.errors import OutputError
from batcher.images import MalformedImageError, image_size, sniff

log = logging.getLogger(__name__)

THUMBS: Final = ".thumbs"
MAX_SIDE: Final = 320  # twice the card's display size, for sharp thumbnails on HiDPI screens
QUALITY: Final = 80
BACKGROUND: Final = (236, 236, 232)  # behind transparent pixels
THREADS: Final = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class Thumb:
    name: str  # the file's name in .thumbs/
    source_width: int | None
    source_height: int | None


@dataclass(frozen=True, slots=True)
class Thumbnails:
    thumbs: dict[Path, Thumb]  # by source path; an unreadable source is absent
    made: int


def thumb_name(source: Path, size: int, mtime_ns: int) -> str:
    identity = f"{source.name}\0{size}\0{mtime_ns}".encode()
    return hashlib.blake2b(identity, digest_size=8).hexdigest() + ".jpg"


def ensure(folder: Path, sources: Sequence[Path], *, prune: bool = True) -> Thumbnails:
    """A current thumbnail for each readable source, made where missing."""
    thumbs_dir = folder / THUMBS
    try:
        thumbs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError.from_os_error(thumbs_dir, exc, action="create") from None
    wanted: dict[Path, str] = {}
    for source in sources:
        try:
            stat = source.stat()
        except OSError:
            continue  # missing: the card says so
        wanted[source] = thumb_name(source, stat.st_size, stat.st_mtime_ns)
    missing = [s for s, name in wanted.items() if not (thumbs_dir / name).exists()]
    with ThreadPoolExecutor(THREADS) as pool:
        made = dict(
            zip(
                missing,
                pool.map(lambda s: _make(s, thumbs_dir / wanted[s]), missing),
                strict=True,
            )
        )
    result: dict[Path, Thumb] = {}
    for source, name in wanted.items():
        if source in made:
            size = made[source]
            if size is None:
                continue
        else:
            size = _source_size(source)
        result[source] = Thumb(name, *(size or (None, None)))
    if prune:
        _prune(thumbs_dir, set(wanted.values()))
    return Thumbnails(result, sum(1 for size in made.values() if size is not None))


def _source_size(source: Path) -> tuple[int, int] | None:
    """The image's size from its headers (no decoding)."""
    try:
        with source.open("rb") as stream:
            kind = sniff(stream.read(12))
            if kind is None:
                return None
            stream.seek(0)
            return image_size(stream, kind)
    except (OSError, MalformedImageError):
        return None


def _make(source: Path, target: Path) -> tuple[int, int] | None:
    """Write the thumbnail of `source` to `target`; the source's size, or None
    when it cannot be read as an image."""
    tmp = target.with_name(f".{target.name}.part")
    try:
        with Image.open(source) as image:
            size = image.size
            image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEGs decode at a smaller scale
            if image.mode in ("RGB", "L"):
                thumb = image.copy()
            elif image.has_transparency_data:
                thumb = _flatten(image)
            else:
                thumb = image.convert("RGB")
        thumb.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BICUBIC, reducing_gap=3.0)
        thumb.save(tmp, "JPEG", quality=QUALITY, optimize=True)
        tmp.replace(target)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        tmp.unlink(missing_ok=True)
        log.warning("%s: no thumbnail: %s", source, exc)
        return None
    return size


def _flatten(image: Image.Image) -> Image.Image:
    """An RGB copy, transparent pixels over a neutral background."""
    rgba = image.convert("RGBA")
    flat = Image.new("RGB", rgba.size, BACKGROUND)
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


def _prune(thumbs_dir: Path, keep: set[str]) -> None:
    for path in thumbs_dir.glob("*.jpg"):
        if path.name not in keep:
            path.unlink(missing_ok=True)
