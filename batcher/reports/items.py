"""`batcher items`: every item of a batch, what it cost and, when it did not
complete, why.

The reason is built from what the ledger kept: the kind of failure, the API's
status and message, or the fact that an answer was lost. `resume_with` says
which command would try the item again, if any would.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from batcher.errors import ConfigError
from batcher.ledger import (
    FAILURE_DOWNLOAD,
    FAILURE_LOST,
    FAILURE_REFUSED,
    FAILURE_RENDER,
    FAILURE_TRANSIENT,
    STATES,
    ItemRecord,
    Ledger,
    SavedFile,
)

RESUME: Final = "resume"
RESUME_RETRY_FAILED: Final = "resume --retry-failed"
RESUME_RESEND: Final = "resume --resend-unconfirmed"


@dataclass(frozen=True, slots=True)
class ItemView:
    key: str
    state: str
    prompt: str
    model: str
    resolution: str | None
    image_count: int
    name: str  # the `name` it is (or would be) created under: find it in the web library
    project_id: str | None
    credits_charged: int
    credits_refunded: int
    files: tuple[str, ...]
    reason: str | None  # why it failed or is in doubt; None when nothing went wrong
    resume_with: str | None  # the command that would try it again, if one would
    # The files with their sha256, size and dimensions (paths only for rows
    # saved before batcher recorded them).
    file_details: tuple[SavedFile, ...] = ()
    # A template's variable values and matrix settings for this item (empty otherwise).
    vars: Mapping[str, str | int] = field(default_factory=dict)

    @property
    def credits_net(self) -> int:
        return self.credits_charged - self.credits_refunded


@dataclass(frozen=True, slots=True)
class ItemsReport:
    batch: str
    state: str | None  # the state asked for, or None for every item
    items: tuple[ItemView, ...]

    def __iter__(self) -> Iterator[ItemView]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def check_state(state: str | None) -> None:
    if state is not None and state not in STATES:
        raise ConfigError(f"--state: unknown state {state!r}; choose among {', '.join(STATES)}")


def items_report(ledger: Ledger, batch_name: str, state: str | None = None) -> ItemsReport:
    """The items of `batch_name` (in `state`, when given); ConfigError for an unknown batch."""
    check_state(state)
    batch = ledger.batch_named(batch_name)
    credits: dict[int, list[int]] = {}
    for project in ledger.known_projects(batch.id):
        entry = credits.setdefault(project.item_id, [0, 0])
        entry[0] += project.charged
        entry[1] += project.refunded
    records = ledger.items(batch.id, states=None if state is None else [state])
    return ItemsReport(
        batch=batch.name,
        state=state,
        items=tuple(_view(record, *credits.get(record.id, (0, 0))) for record in records),
    )


def _view(item: ItemRecord, charged: int, refunded: int) -> ItemView:
    reason, resume_with = explain(item)
    return ItemView(
        key=item.key,
        state=item.state,
        prompt=item.prompt,
        model=item.settings.model,
        resolution=item.settings.resolution,
        image_count=item.settings.image_count,
        name=item.project_name,
        project_id=item.project_id,
        credits_charged=charged,
        credits_refunded=refunded,
        files=item.files,
        reason=reason,
        resume_with=resume_with,
        file_details=item.file_details,
        vars=dict(item.vars),
    )


def explain(item: ItemRecord) -> tuple[str | None, str | None]:
    """(why the item is not complete, the command that would try it again)."""
    said = _api_said(item)
    if item.state == "failed":
        if item.failure == FAILURE_REFUSED:
            return f"refused by the API{said}", RESUME_RETRY_FAILED
        if item.failure == FAILURE_TRANSIENT:
            return f"not accepted after every retry (429, 5xx or no connection){said}", RESUME
        if item.failure == FAILURE_RENDER:
            return f"the render failed and was refunded{said}", RESUME
        if item.failure == FAILURE_DOWNLOAD:
            return f"rendered, but the images could not be saved{said}", RESUME
        if item.failure == FAILURE_LOST:
            return (
                f"the project was not found or was canceled, paid and not refunded{said}",
                RESUME_RETRY_FAILED,
            )
        return f"failed{said}", RESUME_RETRY_FAILED
    if item.state == "unconfirmed":
        return (
            f"in doubt: sent, but the answer was lost{said}; it may have been charged. "
            f"Look for {item.project_name!r} in the web library",
            RESUME_RESEND,
        )
    if item.state == "sending":
        # A live worker may be sending it right now; if none is, the next run
        # marks it in doubt (it may have reached the API).
        return "being sent, or in doubt if no run is going: no answer recorded yet", None
    if item.state == "submitted" and item.error_message:
        # The create's answer had no usable charge: a poll (resume, reconcile) tells it.
        return f"submitted; {item.error_message}", RESUME
    if item.state == "pending" and item.error_message:
        # Refused with 429/5xx last time: still to send, and why it was not yet.
        return f"not sent yet; last attempt{said}", RESUME
    return None, None


def _api_said(item: ItemRecord) -> str:
    if item.error_status is not None and item.error_message:
        return f" (HTTP {item.error_status}: {item.error_message})"
    if item.error_status is not None:
        return f" (HTTP {item.error_status})"
    if item.error_message:
        return f" ({item.error_message})"
    return ""


def items_json(report: ItemsReport) -> dict[str, Any]:
    """`items --json`."""
    return {
        "batch": report.batch,
        "state": report.state,
        "items": [
            {
                "key": item.key,
                "state": item.state,
                "prompt": item.prompt,
                "model": item.model,
                "resolution": item.resolution,
                "image_count": item.image_count,
                "vars": dict(item.vars),
                "name": item.name,
                "project_id": item.project_id,
                "credits_charged": item.credits_charged,
                "credits_refunded": item.credits_refunded,
                "credits_net": item.credits_net,
                "files": list(item.files),
                "file_details": [f.as_json() for f in item.file_details],
                "reason": item.reason,
                "resume_with": item.resume_with,
            }
            for item in report.items
        ],
    }
