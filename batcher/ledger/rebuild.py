"""Rebuilding a batch the ledger lost, from what its manifest says (`batcher recover`).

Each item comes back in the state its latest manifest line gives, with its
project id, its charge and refund rows, its saved files, and `recovered` set:

    complete, submitted   the project is known: a run follows or has its images
    failed (a project)    its render or download failed: resume polls the project again
    failed (no project)   the create was refused (HTTP 4xx) or ran out of retries
    unconfirmed           sent, answer lost: in doubt, never re-sent without --resend-unconfirmed
    anything else         pending

Items the manifest does not list are not made here: the next `run` of the job
file adds them as pending, as it adds any new prompt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update

from batcher.errors import ConfigError
from batcher.jobfile.items import ItemSettings
from batcher.ledger.tables import BATCHES, CREDITS, ITEMS, settings_columns
from batcher.ledger.transactions import Database
from batcher.ledger.values import (
    FAILURE_DOWNLOAD,
    FAILURE_REFUSED,
    FAILURE_TRANSIENT,
    SavedFile,
    files_to_json,
)
from batcher.ledger.writes import credit_row


@dataclass(frozen=True, slots=True)
class RebuiltItem:
    """One item as the manifest last described it."""

    key: str
    ordinal: int
    prompt: str
    settings: ItemSettings
    project_name: str
    state: str
    project_id: str | None
    charged: int  # 0 when the line says nothing was charged, or nothing is known
    refunded: int
    files: tuple[SavedFile, ...]
    error: str | None
    source: str  # the manifest
    line: int


@dataclass(frozen=True, slots=True)
class RebuildCounts:
    batch_id: int
    states: Mapping[str, int]
    charged: int
    refunded: int


def rebuild_batch(
    db: Database, name: str, items: Sequence[RebuiltItem], *, settings: Mapping[str, Any]
) -> RebuildCounts:
    """Create batch `name` with `items`, in one transaction; refuses a batch the
    ledger already has (ConfigError: recover is for a batch it lost)."""

    def work(conn: Connection) -> RebuildCounts:
        if conn.scalar(select(BATCHES.c.id).where(BATCHES.c.name == name)) is not None:
            raise ConfigError(
                f"the ledger already has batch {name!r}: recover rebuilds a batch the ledger "
                "lost; use `batcher resume` for this one"
            )
        now = db.clock()
        charged = sum(item.charged for item in items if item.project_id)
        refunded = sum(item.refunded for item in items if item.project_id)
        batch_id = conn.execute(
            insert(BATCHES)
            .values(
                name=name,
                job_path=None,
                job_hash=None,
                budget=None,
                settings=dict(settings),
                credits_net=charged - refunded,
                credits_reserved=0,
                created_at=now,
                updated_at=now,
            )
            .returning(BATCHES.c.id)
        ).scalar_one()
        states: Counter[str] = Counter()
        credit_rows: list[dict[str, Any]] = []
        for item in items:
            row = _row(batch_id, item, now)
            states[row["state"]] += 1
            item_id = conn.execute(insert(ITEMS).values(**row).returning(ITEMS.c.id)).scalar_one()
            if item.project_id is not None:
                credit_rows.append(
                    credit_row(batch_id, item_id, "charge", item.charged, item.project_id, now)
                )
                if item.refunded:
                    credit_rows.append(
                        credit_row(batch_id, item_id, "refund", item.refunded, item.project_id, now)
                    )
        if credit_rows:
            conn.execute(insert(CREDITS), credit_rows)
        conn.execute(update(BATCHES).where(BATCHES.c.id == batch_id).values(updated_at=now))
        return RebuildCounts(batch_id, dict(states), charged, refunded)

    return db.write(work, retry=False)


def _row(batch_id: int, item: RebuiltItem, now: Any) -> dict[str, Any]:
    state, failure = _state(item)
    sent = item.project_id is not None or state == "unconfirmed"
    return {
        "batch_id": batch_id,
        "key": item.key,
        "ordinal": item.ordinal,
        "prompt": item.prompt,
        **settings_columns(item.settings),
        "project_name": item.project_name,
        "source_path": item.source,
        "source_line": item.line,
        "estimate": item.charged,
        "estimate_exact": False,
        "state": state,
        "failure": failure,
        "attempts": 1 if sent else 0,
        "render_failures": 0,
        "project_id": item.project_id,
        "credits_reserved": 0,
        "error_message": item.error,
        "files": files_to_json(item.files) if item.files else None,
        "recovered": True,
        "created_at": now,
        "updated_at": now,
        "submitted_at": now if item.project_id else None,
        "finished_at": now if state in ("complete", "failed") else None,
    }


def _state(item: RebuiltItem) -> tuple[str, str | None]:
    if item.state in ("complete", "submitted") and item.project_id:
        return item.state, None
    if item.state == "failed":
        if item.project_id:
            # Whatever failed (the render, the download), resume polls the project
            # again and goes on from what the server says, as after a failed download.
            return "failed", FAILURE_DOWNLOAD
        refused = (item.error or "").startswith("HTTP 4") and not (item.error or "").startswith(
            "HTTP 429"
        )
        return "failed", FAILURE_REFUSED if refused else FAILURE_TRANSIENT
    if item.state == "unconfirmed":
        return "unconfirmed", None
    return "pending", None
