"""The ledger's webhook rows: events received (once each, however often delivered),
refusals counted, and the reads that let every worker settle what any worker
received (DESIGN.md, "Webhooks instead of polls").

An event is keyed by its type and project: a second delivery, by the same or
another worker, only adds to `deliveries`. Refused deliveries (bad signature,
stale) are one counting row per receiving worker, kept apart from events, so a
flood of forged requests grows no table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

from sqlalchemy import Connection, Table, func, select, union, update
from sqlalchemy.dialects import postgresql, sqlite

from batcher.ledger.models import CreditEvent, Item, WebhookEvent
from batcher.ledger.transactions import Database

EVENTS = cast(Table, WebhookEvent.__table__)
ITEMS = cast(Table, Item.__table__)
CREDITS = cast(Table, CreditEvent.__table__)

KIND_EVENT: Final = "event"
KIND_REJECTED: Final = "rejected"

_INSERT = {
    "sqlite": sqlite.insert(EVENTS).on_conflict_do_nothing(),
    "postgresql": postgresql.insert(EVENTS).on_conflict_do_nothing(),
}


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A verified event as the ledger holds it."""

    id: int
    event_type: str
    project_id: str
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class WebhookCounts:
    events: int  # distinct verified events for the batch's projects
    deliveries: int  # their deliveries, duplicates included
    rejected: int  # deliveries refused by the batch's receivers


def event_key(event_type: str, project_id: str) -> str:
    return f"{event_type}:{project_id}"


def record_event(
    db: Database,
    event_type: str,
    project_id: str,
    payload: Mapping[str, Any],
    *,
    batch_id: int | None,
    worker_id: str | None,
) -> bool:
    """Store a verified event; True when it is new, False for another delivery of
    one already stored (by any worker)."""
    key = event_key(event_type, project_id)
    now = db.clock()

    def work(conn: Connection) -> bool:
        inserted = conn.execute(
            _INSERT[db.dialect],
            {
                "event_key": key,
                "kind": KIND_EVENT,
                "event_type": event_type,
                "project_id": project_id,
                "batch_id": batch_id,
                "payload": dict(payload),
                "deliveries": 1,
                "received_by": worker_id,
                "received_at": now,
                "last_at": now,
            },
        )
        if inserted.rowcount:
            return True
        conn.execute(
            update(EVENTS)
            .where(EVENTS.c.event_key == key)
            .values(deliveries=EVENTS.c.deliveries + 1, last_at=now)
        )
        return False

    return db.write(work)


def record_rejected(db: Database, *, batch_id: int, worker_id: str, count: int = 1) -> None:
    """Count `count` refused deliveries at this worker's receiver."""
    key = f"{KIND_REJECTED}:{worker_id}"
    now = db.clock()

    def work(conn: Connection) -> None:
        changed = conn.execute(
            update(EVENTS)
            .where(EVENTS.c.event_key == key)
            .values(deliveries=EVENTS.c.deliveries + count, last_at=now)
        )
        if changed.rowcount:
            return
        conn.execute(
            _INSERT[db.dialect],
            {
                "event_key": key,
                "kind": KIND_REJECTED,
                "batch_id": batch_id,
                "deliveries": count,
                "received_by": worker_id,
                "received_at": now,
                "last_at": now,
            },
        )

    db.write(work)


def events_after(db: Database, after_id: int, *, limit: int = 1000) -> list[StoredEvent]:
    """Verified events stored after row `after_id`, oldest first."""
    query = (
        select(EVENTS.c.id, EVENTS.c.event_type, EVENTS.c.project_id, EVENTS.c.payload)
        .where(EVENTS.c.id > after_id, EVENTS.c.kind == KIND_EVENT)
        .order_by(EVENTS.c.id)
        .limit(limit)
    )
    return db.read(lambda conn: [_stored(row) for row in conn.execute(query)])


def last_event_id(db: Database) -> int:
    query = select(func.coalesce(func.max(EVENTS.c.id), 0))
    return int(db.read(lambda conn: conn.scalar(query)) or 0)


def counts(db: Database, batch_id: int) -> WebhookCounts:
    """Events for the batch's projects (every project it was charged for, and the
    ones its items hold), and the deliveries its receivers refused."""
    projects = union(
        select(CREDITS.c.project_id).where(CREDITS.c.batch_id == batch_id),
        select(ITEMS.c.project_id).where(
            ITEMS.c.batch_id == batch_id, ITEMS.c.project_id.is_not(None)
        ),
    ).subquery()
    events = select(func.count(), func.coalesce(func.sum(EVENTS.c.deliveries), 0)).where(
        EVENTS.c.kind == KIND_EVENT, EVENTS.c.project_id.in_(select(projects.c.project_id))
    )
    rejected = select(func.coalesce(func.sum(EVENTS.c.deliveries), 0)).where(
        EVENTS.c.kind == KIND_REJECTED, EVENTS.c.batch_id == batch_id
    )

    def work(conn: Connection) -> WebhookCounts:
        row = conn.execute(events).one()
        return WebhookCounts(int(row[0]), int(row[1]), int(conn.scalar(rejected) or 0))

    return db.read(work)


def _stored(row: Any) -> StoredEvent:
    return StoredEvent(int(row.id), str(row.event_type), str(row.project_id), row.payload or {})
