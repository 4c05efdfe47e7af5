"""What a batch's gallery shows, as values: read from the ledger (items,
credits, reviews, reruns) and the batch's `manifest.jsonl` (files with their
sizes, `vars`, error texts) into a `GalleryData`. Nothing here writes; the page
is `batcher.reports.gallery_page`, the writing `batcher.reports.gallery`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from batcher.errors import ConfigError, OutputError
from batcher.folders import MANIFEST, batch_folder
from batcher.ledger import (
    FAILURE_DOWNLOAD,
    FAILURE_LOST,
    FAILURE_REFUSED,
    FAILURE_RENDER,
    FAILURE_TRANSIENT,
    STATES,
    ItemCredits,
    ItemRecord,
    Ledger,
    SavedFile,
)
from batcher.ledger.models import utcnow

log = logging.getLogger(__name__)

PAGE_NAME: Final = "index.html"
# Settings an axis of the grid may name besides the batch's variables.
SETTING_AXES: Final = ("model", "resolution", "aspect_ratio", "tool", "image_count", "state")

_FAILURES: Final = {
    FAILURE_REFUSED: "refused by the API",
    FAILURE_TRANSIENT: "the API stayed unavailable (429/5xx) until retries ran out",
    FAILURE_RENDER: "the render failed (refunded)",
    FAILURE_DOWNLOAD: "rendered, but the images could not be saved",
    FAILURE_LOST: "the project was not found or was canceled (paid, not refunded)",
}


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class GalleryFile:
    """One image of an item."""

    path: str  # relative to the batch folder when inside it, else absolute
    width: int | None = None
    height: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    thumb: str | None = None  # the thumbnail's name in `.thumbs/`, once made


@dataclass(frozen=True, slots=True)
class GalleryReview:
    verdict: str  # "pick" or "reject"
    note: str | None = None


@dataclass(frozen=True, slots=True)
class GalleryItem:
    """One card of the gallery."""

    key: str
    ordinal: int
    state: str
    prompt: str
    model: str
    resolution: str | None
    aspect_ratio: str
    tool: str
    image_count: int
    vars: Mapping[str, str] = field(default_factory=dict)
    project_id: str | None = None
    credits_charged: int = 0
    credits_refunded: int = 0
    reason: str | None = None  # why it failed or is in doubt
    files: tuple[GalleryFile, ...] = ()
    reviews: Mapping[int, GalleryReview] = field(default_factory=dict)  # by image index
    redo_of: str | None = None  # the key of the item this one redoes

    def axis_value(self, axis: str) -> str | None:
        """The item's value on a grid axis: a variable, else a setting."""
        if axis in self.vars:
            return self.vars[axis]
        if axis in SETTING_AXES:
            value = getattr(self, axis)
            return None if value is None else str(value)
        return None


@dataclass(frozen=True, slots=True)
class Credits:
    charged: int = 0
    refunded: int = 0

    @property
    def net(self) -> int:
        return self.charged - self.refunded

    def __add__(self, other: Credits) -> Credits:
        return Credits(self.charged + other.charged, self.refunded + other.refunded)


@dataclass(frozen=True, slots=True)
class GalleryData:
    """Everything the page shows about one batch."""

    batch: str
    items: tuple[GalleryItem, ...]
    rows: str | None = None  # the grid's axes: a variable or a setting
    cols: str | None = None
    generated_at: datetime = field(default_factory=utcnow)

    @property
    def states(self) -> dict[str, int]:
        counts = Counter(item.state for item in self.items)
        return {state: counts.get(state, 0) for state in STATES}

    @property
    def credits(self) -> Credits:
        total = Credits()
        for credits in self.credits_per_model.values():
            total = total + credits
        return total

    @property
    def credits_per_model(self) -> dict[str, Credits]:
        models: dict[str, Credits] = {}
        for item in self.items:
            spent = Credits(item.credits_charged, item.credits_refunded)
            models[item.model] = models.get(item.model, Credits()) + spent
        return dict(sorted(models.items()))

    @property
    def var_names(self) -> list[str]:
        return var_names(self.items)


@dataclass(frozen=True, slots=True)
class GalleryResult:
    path: Path
    items: int
    images: int
    thumbnails_made: int


# --------------------------------------------------------------------------- pure parts


def var_names(items: Iterable[GalleryItem]) -> list[str]:
    """Variable names in order of first appearance."""
    seen: dict[str, None] = {}
    for item in items:
        for name in item.vars:
            seen.setdefault(name, None)
    return list(seen)


def choose_axes(
    items: Sequence[GalleryItem], rows: str | None, cols: str | None
) -> tuple[str | None, str | None]:
    """The grid's axes: the ones asked for (a variable or a setting), else the
    batch's first two variables. ConfigError names an axis the batch lacks."""
    names = var_names(items)
    for flag, axis in (("--rows", rows), ("--cols", cols)):
        if axis is not None and axis not in names and axis not in SETTING_AXES:
            known = ", ".join([*names, *SETTING_AXES])
            raise ConfigError(f"{flag} {axis}: not a variable or setting of the batch ({known})")
    defaults = [name for name in names if name not in (rows, cols)]
    if rows is None and defaults:
        rows = defaults.pop(0)
    if cols is None and defaults:
        cols = defaults.pop(0)
    return rows, cols


def failure_reason(item: ItemRecord, manifest_error: str | None = None) -> str | None:
    """Why an item failed or is in doubt, in words; None for the others."""
    detail = item.error_message
    if item.error_status is not None and detail:
        detail = f"HTTP {item.error_status}: {detail}"
    detail = detail or manifest_error
    if item.state == "failed":
        why = _FAILURES.get(item.failure or "", "failed")
        return f"{why}: {detail}" if detail else why
    if item.state == "unconfirmed":
        why = "in doubt: sent, but the answer was lost (it may have been charged)"
        return f"{why}: {detail}" if detail else why
    return None


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The latest line per item key of a manifest; an absent file is empty.
    A line that is not JSON (a crash mid-write) is skipped."""
    entries: dict[str, dict[str, Any]] = {}
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    entry = json.loads(line)
                except ValueError:
                    log.warning("%s:%d: not a JSON line, skipped", path, number)
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                    entries[entry["key"]] = entry
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise OutputError.from_os_error(path, exc, action="read") from None
    return entries


def locate(path: str, folder: Path) -> Path:
    """Where a recorded file is now: by its name in the batch folder (where the
    runner saves every image, whatever the working directory of the run and
    wherever the folder was moved since), else as recorded."""
    recorded = Path(path)
    in_folder = folder / recorded.name
    if in_folder.exists() or not recorded.exists():
        return in_folder.absolute()
    return recorded.absolute()


def page_path(folder: Path, located: Path) -> str:
    """A file's path as the gallery stores it: relative to the batch folder
    when inside it (POSIX separators), else absolute."""
    try:
        return located.relative_to(folder.absolute()).as_posix()
    except ValueError:
        return str(located)


def _files(
    record: ItemRecord, entry: Mapping[str, Any] | None, folder: Path
) -> tuple[GalleryFile, ...]:
    """The item's images: the ledger's files with their details (hash, size,
    dimensions), completed by what the manifest knows of each (rows saved
    before the ledger kept details)."""
    described: dict[str, Mapping[str, Any]] = {}
    listed: list[str] = []
    for value in (entry or {}).get("files") or ():
        if isinstance(value, Mapping) and isinstance(value.get("path"), str):
            described[value["path"]] = value
            listed.append(value["path"])
        elif isinstance(value, str):
            listed.append(value)
    recorded = record.file_details or tuple(SavedFile(path) for path in record.files)
    if not recorded:
        recorded = tuple(SavedFile(path) for path in listed)
    files = []
    for saved in recorded:
        info = described.get(saved.path, {})
        sha256 = saved.sha256 or info.get("sha256")
        files.append(
            GalleryFile(
                path=page_path(folder, locate(saved.path, folder)),
                width=saved.width or _int(info.get("width")),
                height=saved.height or _int(info.get("height")),
                bytes=saved.bytes if saved.bytes is not None else _int(info.get("bytes")),
                sha256=sha256 if isinstance(sha256, str) else None,
            )
        )
    return tuple(files)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _vars(entry: Mapping[str, Any] | None) -> dict[str, str]:
    found = (entry or {}).get("vars")
    if not isinstance(found, Mapping):
        return {}
    return {str(name): str(value) for name, value in found.items()}


# --------------------------------------------------------------------------- from the ledger


def gallery_folder(ledger: Ledger, batch_name: str, out_dir: Path | None) -> Path:
    """The batch's folder: `--out` as given, else where its images were saved
    (the folder holding most of them), else out/<batch name>."""
    if out_dir is not None:
        return out_dir
    batch = ledger.get_batch(batch_name)
    if batch is not None:
        parents: Counter[Path] = Counter()
        for record in ledger.items(batch.id, states=["complete"]):
            for path in record.files:
                parents[Path(path).parent] += 1
            if sum(parents.values()) >= 100:
                break
        if parents:
            return parents.most_common(1)[0][0]
    return batch_folder(None, batch_name)


def gallery_data(
    ledger: Ledger,
    batch_name: str,
    folder: Path,
    *,
    rows: str | None = None,
    cols: str | None = None,
    now: datetime | None = None,
) -> GalleryData:
    """The page's content for a batch whose files are in `folder`.

    ConfigError for an unknown batch or an axis the batch lacks.
    """
    batch = ledger.get_batch(batch_name)
    if batch is None:
        raise ConfigError(f"no batch named {batch_name!r} in the ledger")
    manifest = read_manifest(folder / MANIFEST)
    credits = ledger.item_credits(batch.id)
    redo = ledger.redo_links(batch.id)
    decisions: dict[str, dict[int, GalleryReview]] = {}
    for (key, image), review in ledger.latest_reviews(batch.id).items():
        decisions.setdefault(key, {})[image] = GalleryReview(review.verdict, review.note)
    items = []
    for record in ledger.items(batch.id):
        entry = manifest.get(record.key)
        spent = credits.get(record.key, ItemCredits(0, 0))
        settings = record.settings
        manifest_error = entry.get("error") if entry else None
        items.append(
            GalleryItem(
                key=record.key,
                ordinal=record.ordinal,
                state=record.state,
                prompt=record.prompt,
                model=settings.model,
                resolution=settings.resolution,
                aspect_ratio=settings.aspect_ratio,
                tool=settings.tool,
                image_count=settings.image_count,
                vars=_vars(entry),
                project_id=record.project_id,
                credits_charged=spent.charged,
                credits_refunded=spent.refunded,
                reason=failure_reason(
                    record, manifest_error if isinstance(manifest_error, str) else None
                ),
                files=_files(record, entry, folder),
                reviews=decisions.get(record.key, {}),
                redo_of=redo.get(record.key),
            )
        )
    items.sort(key=lambda item: (item.ordinal, item.key))
    rows, cols = choose_axes(items, rows, cols)
    return GalleryData(
        batch=batch.name, items=tuple(items), rows=rows, cols=cols, generated_at=now or utcnow()
    )
