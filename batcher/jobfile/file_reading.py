"""Reading the files a job names: only regular files, within caps, as UTF-8 lines.

Anything but a regular file (a FIFO, `/dev/zero`, a terminal, a socket) is
refused from its `stat`, before it is opened: opening a FIFO blocks until a
writer comes, and a device may never end. The file is then opened without
blocking and checked again, so a swap in between changes nothing.

A job file is read whole (it becomes a node tree), so its size is capped. A
prompts file is streamed line by line and needs no cap. A vars file is held
(its values are an axis of a product) and has the same cap as a job file.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

from batcher.jobfile.problems import Problems

__all__ = [
    "MAX_HELD_FILE_BYTES",
    "NotRegularFileError",
    "TooLargeError",
    "file_size",
    "open_regular",
    "read_capped",
    "text_lines",
]

# A job file of 100,000 inline prompts is about 13 MB; its node tree costs about
# ten times that in memory. Longer lists belong in a prompts file, which streams.
MAX_HELD_FILE_BYTES: Final = 64_000_000

_KINDS: Final = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFileError(OSError):
    """The path names something other than a regular file; `kind` says what."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"is {kind}, not a regular file")
        self.kind = kind


class TooLargeError(OSError):
    """A file to be held in memory is larger than `MAX_HELD_FILE_BYTES`."""

    def __init__(self, size: int) -> None:
        super().__init__(
            f"is {size / 1e6:,.1f} MB, more than the {MAX_HELD_FILE_BYTES / 1e6:,.0f} MB"
        )
        self.size = size


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a plain file")


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading, or raise OSError without blocking.

    `IsADirectoryError` for a folder, `NotRegularFileError` for any other
    non-regular file, and the usual `FileNotFoundError`, `PermissionError`...
    """
    kind = _kind(path.stat().st_mode)
    if kind == "a folder":
        raise IsADirectoryError(21, "Is a directory", str(path))
    if kind is not None:
        raise NotRegularFileError(kind)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        kind = _kind(os.fstat(fd).st_mode)  # swapped for something else since the stat?
        if kind is not None:
            raise NotRegularFileError(kind)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_capped(path: Path) -> bytes:
    """The whole content of a regular file of at most `MAX_HELD_FILE_BYTES`."""
    with open_regular(path) as stream:
        size = os.fstat(stream.fileno()).st_size
        if size > MAX_HELD_FILE_BYTES:
            raise TooLargeError(size)
        # read(n) allocates n bytes up front: ask for the size, and more only if the
        # file grew since the fstat.
        data = stream.read(size + 1)
        while len(data) > size and len(data) <= MAX_HELD_FILE_BYTES:
            more = stream.read(1 << 20)
            if not more:
                break
            data += more
            size = len(data) - 1
    if len(data) > MAX_HELD_FILE_BYTES:
        raise TooLargeError(len(data))
    return data


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def text_lines(
    stream: BinaryIO,
    display: str,
    origin: str,
    problems: Problems,
    *,
    what: str,
    hasher: hashlib._Hash | None = None,
) -> Iterator[tuple[int, str]]:
    """(line number, text with its line ending) of a UTF-8 text stream, hashing as it goes.

    Stops at the first NUL byte, undecodable line or read error: one message says
    it all. `what` names what the file should hold ("prompts text"); `origin`
    (e.g. "prompts[0].file in job.yaml:6") tells which entry of which job file
    named this file.
    """
    number = 0
    try:
        for number, raw in enumerate(stream, start=1):
            if hasher is not None:
                hasher.update(raw)
            if b"\0" in raw:
                problems.error(
                    display,
                    number,
                    None,
                    f"contains NUL bytes: a binary file, not {what} ({origin})",
                )
                return
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                message = f"not UTF-8 text (byte 0x{raw[exc.start]:02x}) ({origin})"
                problems.error(display, number, None, message)
                return
            if number == 1 and text.startswith("\ufeff"):  # a BOM from Windows editors
                text = text[1:]
            yield number, text
    except OSError as exc:
        message = f"cannot read it: {exc.strerror or exc} ({origin})"
        problems.error(display, number + 1, None, message)
