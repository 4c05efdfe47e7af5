"""Writing a batch's files: image names, the output folder's probe, the manifest.

Every OSError from the output folder is translated here (and in the client's
download, which writes the images) into OutputError, naming the path: a full
disk is a one-line message and a stopped run, never a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from batcher.errors import OutputError, OutputFolderError
from batcher.folders import MANIFEST, slug

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# json.dumps(entry, ensure_ascii=False, separators=(",", ":")) without building
# an encoder for every line.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
PROBE_PREFIX = ".batcher-probe-"
DOWNLOAD_SUFFIX = ".download"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})


def prepare_folder(folder: Path) -> None:
    """Create the output folder and prove it writable (write and remove a probe file),
    before anything is sent: a folder found unwritable after paying for the images
    would leave them to be fetched again later. OutputFolderError (exit 2) if not."""
    shown = folder.absolute()
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(shown, "it is a file, not a folder; choose another with --out")
    if (folder / MANIFEST).is_symlink():
        raise OutputFolderError(
            shown / MANIFEST,
            "it is a symbolic link; batcher does not write through one (remove it)",
        )
    probe = folder / f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"batcher")
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise OutputFolderError(
            shown,
            f"{exc.strerror or type(exc).__name__} (the output folder must be writable; "
            "choose another with --out)",
        ) from None


def image_stem(ordinal: int, prompt: str, key: str, index: int) -> str:
    """An image's file name without its extension, which the bytes decide
    (batcher.run.provenance). Unique within a batch because the item key is;
    readable because of the slug."""
    return f"{ordinal + 1:05d}-{slug(prompt)}-{key}-{index + 1}"


def download_name(stem: str) -> str:
    """The hidden file an image is downloaded to, beside its final name, before
    its type is known and its provenance written."""
    return f".{stem}{DOWNLOAD_SUFFIX}"


def image_name(ordinal: int, prompt: str, key: str, index: int, url: str) -> str:
    """`image_stem` with the URL's suffix (.png when it has none we know). The
    runner no longer uses it: a URL's suffix says nothing about the bytes."""
    suffix = Path(urlsplit(url).path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        suffix = ".png"
    return image_stem(ordinal, prompt, key, index) + suffix


class Manifest:
    """Append-only JSON lines, one per item as it finishes (or, named SENT_LOG, as
    it is created); a later line for a key supersedes an earlier one. Each line is
    one write() on an O_APPEND file, so several workers may share it."""

    def __init__(self, folder: Path, name: str = MANIFEST) -> None:
        self.path = folder / name
        self._fd: int | None = None
        self._cut_short = False

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Never written through a symbolic link planted in its place.
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputError(
                    self.path, "it is a symbolic link, not followed (remove it)"
                ) from None
            raise OutputError.from_os_error(self.path, exc) from None

    def write(self, entry: dict[str, Any]) -> None:
        """Append one line; OutputError when it cannot be written."""
        if self._fd is None:
            self.open()
        assert self._fd is not None
        line = (_encode(entry) + "\n").encode()
        if self._cut_short:
            # The last line stopped mid-way (a full disk): end it, so that this one
            # stands on a line of its own and only the cut one fails to parse.
            line = b"\n" + line
        try:
            written = os.write(self._fd, line)
        except OSError as exc:
            raise OutputError.from_os_error(self.path, exc) from None
        self._cut_short = written != len(line)
        if self._cut_short:
            raise OutputError(self.path, "No space left on device (a line was cut short)")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
