"""Where a batch's files go: image names, the output folder, the manifest."""

from __future__ import annotations

import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MANIFEST = "manifest.jsonl"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
SLUG_LENGTH = 40


def slug(text: str, length: int = SLUG_LENGTH) -> str:
    """A short, filesystem-safe, readable echo of `text`."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    words = re.sub(r"[^A-Za-z0-9]+", "-", ascii_text).strip("-").lower()
    return words[:length].rstrip("-") or "item"


def batch_folder(root: Path | None, batch_name: str) -> Path:
    """`--out` as given, else out/<batch name> with the name made safe as one folder."""
    if root is not None:
        return root
    safe = re.sub(r"[^\w.\- ]+", "_", batch_name, flags=re.UNICODE).strip(" .") or "batch"
    return Path("out") / safe


def image_name(ordinal: int, prompt: str, key: str, index: int, url: str) -> str:
    """Unique within a batch because the item key is; readable because of the slug."""
    suffix = Path(urlsplit(url).path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        suffix = ".png"
    return f"{ordinal + 1:05d}-{slug(prompt)}-{key}-{index + 1}{suffix}"


class Manifest:
    """Append-only JSON lines, one per item as it finishes; a later line for a key
    supersedes an earlier one. Each line is one write() on an O_APPEND file, so
    several workers may share it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / MANIFEST
        self._fd: int | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, entry: dict[str, Any]) -> None:
        if self._fd is None:
            self.open()
        assert self._fd is not None
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode("utf-8"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
