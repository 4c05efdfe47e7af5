"""What the ledger hands out and takes in: frozen value objects, no ORM rows.

Records (`BatchRecord`, `ItemRecord`, ...) are what queries return. Operations
(`BeginSend`, `Created`, `SendFailed`, `RenderFinished`, `ReleaseClaims`) are
the runner's writes: each is one state change of one item, committed before
its caller goes on; `Ledger.apply` commits a group of them in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final

from batcher.jobfile.items import NO_VARS, ItemSettings, ItemVars

STATES: Final = ("pending", "sending", "unconfirmed", "submitted", "complete", "failed")

# Why a failed item failed; decides what `resume` does with it.
FAILURE_REFUSED: Final = "refused"  # refused with a 4xx other than 429: needs --retry-failed
FAILURE_TRANSIENT: Final = "transient"  # 429/5xx/unreachable until retries ran out: resume retries
FAILURE_RENDER: Final = "render"  # the render failed (refunded): resume re-creates it
FAILURE_DOWNLOAD: Final = "download"  # rendered but not saved: resume re-polls and downloads
# The project answered 404 or came back `canceled`: paid, and no refund seen.
# Never re-created automatically (not by the run, not by resume): --retry-failed.
FAILURE_LOST: Final = "lost"

# The keys a credit report can be grouped by, in their documented order.
GROUP_KEYS: Final = ("batch", "model", "day", "resolution")

GroupValue = str | date | None


# --------------------------------------------------------------------------- batches and items


@dataclass(frozen=True, slots=True)
class SavedFile:
    """One saved image of an item, as `items.files` keeps it. Rows written before
    the files had details (a plain list of paths) read back with only `path`."""

    path: str
    sha256: str | None = None  # of the file as saved (provenance chunks included)
    bytes: int | None = None
    width: int | None = None
    height: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "width": self.width,
            "height": self.height,
        }


def files_to_json(files: Sequence[SavedFile | str]) -> list[Any]:
    """`items.files` as stored: an object per file (a bare path stays a path)."""
    return [f if isinstance(f, str) else f.as_json() for f in files]


def files_from_json(value: Any) -> tuple[SavedFile, ...]:
    """`items.files` read back, in either shape: a list of paths (older rows) or
    of objects; anything else in the list is skipped."""
    if isinstance(value, str):
        value = json.loads(value)
    found: list[SavedFile] = []
    for entry in value or ():
        if isinstance(entry, str):
            found.append(SavedFile(entry))
        elif isinstance(entry, Mapping) and isinstance(entry.get("path"), str):
            found.append(
                SavedFile(
                    entry["path"],
                    _str(entry.get("sha256")),
                    _int(entry.get("bytes")),
                    _int(entry.get("width")),
                    _int(entry.get("height")),
                )
            )
    return tuple(found)


def vars_from_json(value: Any) -> ItemVars:
    """`items.vars` read back: names to text (image_count stays a number); NULL,
    or anything that is not an object, reads as no vars."""
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, Mapping) or not value:
        return NO_VARS
    return {
        str(name): found if isinstance(found, int) and not isinstance(found, bool) else str(found)
        for name, found in value.items()
    }


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: int
    name: str
    job_path: str | None
    job_hash: str | None
    settings: Mapping[str, Any]
    budget: int | None
    credits_net: int
    credits_reserved: int
    shared_rate: float | None
    shared_concurrency: int | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class ItemRecord:
    id: int
    batch_id: int
    key: str
    ordinal: int
    prompt: str
    settings: ItemSettings
    project_name: str
    estimate: int
    estimate_exact: bool
    state: str
    failure: str | None
    attempts: int
    render_failures: int
    project_id: str | None
    credits_reserved: int
    error_status: int | None
    error_message: str | None
    files: tuple[str, ...]  # the saved images' paths
    source_path: str | None
    source_line: int | None
    # The same images with their hash, size and dimensions when the run recorded
    # them (paths only for rows written before it did).
    file_details: tuple[SavedFile, ...] = field(default=(), compare=False)
    # A template's variable values and matrix settings for this item, in
    # expansion order; empty for an item that is no combination of a template.
    vars: ItemVars = field(default_factory=lambda: NO_VARS, compare=False)


@dataclass(frozen=True, slots=True)
class SyncResult:
    added: int
    kept: int
    dropped: int  # never-sent items no longer in the job file


@dataclass(frozen=True, slots=True)
class RequeueCounts:
    retried: int = 0  # failed items made pending again
    repoll: int = 0  # download failures made submitted again
    resend: int = 0  # unconfirmed items the user asked to re-send


@dataclass(frozen=True, slots=True)
class BatchSummary:
    id: int
    name: str
    items: int
    states: Mapping[str, int]
    credits_charged: int
    credits_refunded: int
    budget: int | None
    created_at: datetime
    finished_at: datetime | None

    @property
    def credits_net(self) -> int:
        return self.credits_charged - self.credits_refunded


@dataclass(frozen=True, slots=True)
class Demand:
    """Pending items that share a model, resolution and image count."""

    settings: ItemSettings
    items: int
    estimate: int  # sum of the items' estimates
    samples: tuple[str, ...]  # a few of them, as "FILE:LINE: prompt"


# --------------------------------------------------------------------------- workers


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    id: str
    batch_id: int
    host: str
    pid: int
    pid_start: int | None
    in_flight: int
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None


@dataclass(frozen=True, slots=True)
class RecoveryCounts:
    unconfirmed: int  # items a dead worker was sending: in doubt now
    released: int  # items a dead worker had claimed: free again
    dead_workers: int


# --------------------------------------------------------------------------- credits


@dataclass(frozen=True, slots=True)
class CreditWindow:
    """Which credit rows a report covers: `since` inclusive, `until` exclusive (aware, UTC)."""

    since: datetime | None = None
    until: datetime | None = None
    batch_id: int | None = None


@dataclass(frozen=True, slots=True)
class CreditGroup:
    """The credit rows of one group. `keys` follow the order the report asked for."""

    keys: tuple[GroupValue, ...]
    credits_charged: int
    credits_refunded: int
    images: int  # image_count of the group's charged projects that have no refund row
    items: int  # distinct items with a charge row in the group
    failures: int  # refund rows in the group: renders that failed


@dataclass(frozen=True, slots=True)
class CreditSnapshot:
    """Several groupings of the same credit rows, and the items in doubt, read together."""

    groupings: tuple[tuple[CreditGroup, ...], ...]  # one per grouping asked, in that order
    items_in_doubt: int


@dataclass(frozen=True, slots=True)
class KnownProject:
    """A project the ledger saw created (a credit row, or an item holding its id),
    with what it recorded."""

    batch_id: int
    batch: str
    item_id: int
    item_key: str
    project_id: str
    charged: int  # the sum of its charge rows
    refunded: int  # the sum of its refund rows, 0 when none exists
    # False: the create's answer had no usable charge and no poll told it yet
    # (the item holds the project id, there is no credit row).
    charge_known: bool = True


@dataclass(frozen=True, slots=True)
class DoubtfulItem:
    """An item sent whose answer was lost: it may or may not have been charged."""

    batch: str
    key: str
    project_name: str  # the `name` it was sent with: search for it in the web library
    prompt: str
    model: str
    attempts: int
    sent_at: datetime | None


# --------------------------------------------------------------------------- operations


@dataclass(frozen=True, slots=True)
class BeginSend:
    """Intent: the item is about to be sent. Reserves budget; refused when it does not fit."""

    item_id: int
    batch_id: int
    worker_id: str
    reserve: int  # credits to hold against the budget until the answer settles them
    budgeted: bool = True  # False: the batch has no budget, skip the check


@dataclass(frozen=True, slots=True)
class Created:
    """The API accepted the create: the project id is known and the charge recorded.

    `credits_charged` None: the answer's charge was unusable. The item is
    submitted all the same, keeps its reservation (it may be charged) and
    `note` says why; the first poll that tells the charge records it (ChargeSeen).
    """

    item_id: int
    batch_id: int
    project_id: str
    credits_charged: int | None
    reserved: int
    keep_claim: bool  # False with --no-wait: nobody follows the render in this run
    note: str | None = None


@dataclass(frozen=True, slots=True)
class ChargeSeen:
    """A poll (or reconcile) read a project's `credits_charged`: the ledger records
    the difference from its own net for the project as one credit row, a charge
    (a surcharge, or the charge unknown until now) or a refund, and frees the
    item's reservation. Nothing is written when they agree."""

    item_id: int
    batch_id: int
    project_id: str
    credits_charged: int


@dataclass(frozen=True, slots=True)
class SendFailed:
    """No project id came back. `state` says what that means for the item."""

    item_id: int
    batch_id: int
    state: str  # "pending" (surely not created, will retry), "failed", or "unconfirmed"
    reserved: int
    failure: str | None = None
    status: int | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class RenderFinished:
    """A followed render ended: complete (with files), failed, or requeued for another try."""

    item_id: int
    batch_id: int
    project_id: str
    state: str  # "complete", "failed", "pending" (re-create) or "submitted" (still to save)
    refund: int = 0
    failure: str | None = None
    code: str | None = None
    message: str | None = None
    files: tuple[SavedFile | str, ...] | None = None  # None: leave the column as it is
    count_render_failure: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseClaims:
    """The worker gives items back untouched (stopping, or budget exhausted)."""

    item_ids: tuple[int, ...]


LedgerOp = BeginSend | Created | ChargeSeen | SendFailed | RenderFinished | ReleaseClaims
