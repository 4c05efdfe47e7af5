"""Where a batch's files go: its folder's name, the manifest's, readable slugs.
Pure naming, shared by the run that writes there (batcher.run.files) and the
reports that read it back (the gallery, recover).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

MANIFEST = "manifest.jsonl"  # a line per item finished (DESIGN.md)
# A line per create the API accepted, at once, before its render ends: with the
# manifest, what `batcher recover` needs to rebuild a lost ledger.
SENT_LOG = ".sent.jsonl"
SLUG_LENGTH = 40
FOLDER_NAME_BYTES = 120  # of a batch's folder name, before its hash (names may be 255)
FOLDER_HASH_CHARS = 8


def slug(text: str, length: int = SLUG_LENGTH) -> str:
    """A short, filesystem-safe, readable echo of `text`."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    words = re.sub(r"[^A-Za-z0-9]+", "-", ascii_text).strip("-").lower()
    return words[:length].rstrip("-") or "item"


def batch_folder(root: Path | None, batch_name: str) -> Path:
    """`--out` as given, else out/<batch name> with the name made safe as one folder."""
    if root is not None:
        return root
    return Path("out") / folder_name(batch_name)


def folder_name(batch_name: str) -> str:
    """The batch name as one folder name: letters, digits, `.`, `-`, `_` and spaces
    kept, anything else `_`, at most FOLDER_NAME_BYTES of UTF-8 (file systems
    allow 255). When that changed the name, a short hash of the whole name is
    appended, so that names which read alike (`~`, an emoji, two long names
    with one start) still get folders of their own."""
    safe = re.sub(r"[^\w.\- ]+", "_", batch_name, flags=re.UNICODE).strip(" .") or "batch"
    lossy = safe != batch_name
    while len(safe.encode("utf-8")) > FOLDER_NAME_BYTES:
        safe = safe[:-1]
        lossy = True
    if not lossy:
        return safe
    digest = hashlib.sha256(batch_name.encode("utf-8")).hexdigest()[:FOLDER_HASH_CHARS]
    return f"{safe.rstrip(' .')}-{digest}"
