"""A SQLite ledger file's identity, to notice it removed, replaced or truncated
under a running process.

A process that has the file open keeps writing into it even after it was
deleted (into an unlinked inode nobody will read again) or replaced by another
file at the same path. Comparing what the path names now with what it named at
opening (device, inode) and how large it was (a ledger never shrinks: without
VACUUM, SQLite only grows its file) finds all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class FileIdentity:
    device: int
    inode: int
    size: int


def identity(path: Path) -> FileIdentity | None:
    """What `path` names now; None if nothing."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return FileIdentity(found.st_dev, found.st_ino, found.st_size)


def what_changed(before: FileIdentity, now: FileIdentity | None) -> str | None:
    """'removed', 'replaced by another file' or 'truncated', or None when it is the same file."""
    if now is None:
        return "removed"
    if (now.device, now.inode) != (before.device, before.inode):
        return "replaced by another file"
    if now.size < before.size:
        return f"truncated ({before.size:,} bytes, now {now.size:,})"
    return None


class FileWatch:
    """The identity of one ledger file, checked again with `check()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = identity(path)

    def check(self) -> str | None:
        """What happened to the file since it was last checked (None: nothing)."""
        if self._seen is None:
            return None
        now = identity(self.path)
        change = what_changed(self._seen, now)
        if change is None and now is not None:
            self._seen = now  # it grew: remember the larger size
        return change
