"""Workers, their claims and leases, and recovery from workers that died.

A worker claims pages of items (SELECT ... FOR UPDATE SKIP LOCKED on
PostgreSQL, so workers never wait on each other's claims) under a lease that
its heartbeat extends. What a dead worker held is settled by `recover`: an
item it was sending may have been charged, so it becomes `unconfirmed`;
anything else is released.

On PostgreSQL every update of several item rows locks them in id order first
(`tables.lock_items_where`), as the group commit does: a heartbeat and a group
commit of the same worker cannot deadlock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    and_,
    false,
    func,
    insert,
    or_,
    select,
    update,
)

from batcher.ledger.batches import item_record
from batcher.ledger.tables import HELD_STATES, ITEMS, WORKERS, lock_items_where
from batcher.ledger.transactions import Database
from batcher.ledger.values import ItemRecord, RecoveryCounts, WorkerRecord

log = logging.getLogger(__name__)


def register_worker(db: Database, worker: WorkerRecord) -> None:
    db.write(
        lambda conn: conn.execute(
            insert(WORKERS).values(
                id=worker.id,
                batch_id=worker.batch_id,
                host=worker.host,
                pid=worker.pid,
                pid_start=worker.pid_start,
                in_flight=0,
                started_at=worker.started_at,
                heartbeat_at=worker.heartbeat_at,
            )
        )
    )


def heartbeat(db: Database, worker_id: str, *, lease_until: datetime, in_flight: int) -> None:
    """Prove the worker alive and extend the leases of everything it holds."""

    def work(conn: Connection) -> None:
        conn.execute(
            update(WORKERS)
            .where(WORKERS.c.id == worker_id)
            .values(heartbeat_at=db.clock(), in_flight=in_flight)
        )
        _update_items(
            db,
            conn,
            [ITEMS.c.worker_id == worker_id, ITEMS.c.state.in_(HELD_STATES)],
            lease_expires_at=lease_until,
        )

    db.write(work)


def stop_worker(db: Database, worker_id: str) -> None:
    """A clean exit: give back every claim that is not mid-send."""

    def work(conn: Connection) -> None:
        now = db.clock()
        # The worker's row first, then its items: the lock order of heartbeat and
        # recover too (tables.py), so a peer recovering this worker cannot deadlock.
        conn.execute(
            update(WORKERS)
            .where(WORKERS.c.id == worker_id)
            .values(stopped_at=now, heartbeat_at=now, in_flight=0)
        )
        _update_items(
            db,
            conn,
            [ITEMS.c.worker_id == worker_id, ITEMS.c.state != "sending"],
            worker_id=None,
            lease_expires_at=None,
        )

    db.write(work)


def live_worker_count(db: Database, batch_id: int, lease_s: float) -> int:
    """Workers of the batch that have not stopped and beat within a lease."""
    since = db.clock() - timedelta(seconds=lease_s)
    query = select(func.count()).where(
        WORKERS.c.batch_id == batch_id,
        WORKERS.c.stopped_at.is_(None),
        WORKERS.c.heartbeat_at >= since,
    )
    return int(db.read(lambda conn: conn.scalar(query)) or 0)


def workers(
    db: Database, batch_id: int | None = None, *, live_only: bool = False
) -> list[WorkerRecord]:
    query = select(WORKERS).order_by(WORKERS.c.started_at)
    if batch_id is not None:
        query = query.where(WORKERS.c.batch_id == batch_id)
    if live_only:
        query = query.where(WORKERS.c.stopped_at.is_(None))
    return [worker_record(row) for row in db.read(lambda conn: conn.execute(query).all())]


def recover(
    db: Database,
    batch_id: int,
    *,
    is_dead: Callable[[WorkerRecord], bool],
    now: datetime | None = None,
) -> RecoveryCounts:
    """Settle what workers that died left behind.

    Items a dead worker (or an expired lease) was sending become
    `unconfirmed`: the create may have been charged, so they are never
    re-sent automatically. Everything else it held is released.
    """

    def work(conn: Connection) -> RecoveryCounts:
        at = now or db.clock()
        candidates = [
            worker_record(row)
            for row in conn.execute(
                select(WORKERS).where(
                    WORKERS.c.batch_id == batch_id, WORKERS.c.stopped_at.is_(None)
                )
            )
        ]
        dead = [w.id for w in candidates if is_dead(w)]
        if dead:
            conn.execute(
                update(WORKERS).where(WORKERS.c.id.in_(dead)).values(stopped_at=at, in_flight=0)
            )
        held_by_dead = ITEMS.c.worker_id.in_(dead) if dead else false()
        expired = and_(
            ITEMS.c.worker_id.is_not(None),
            ITEMS.c.lease_expires_at.is_not(None),
            ITEMS.c.lease_expires_at < at,
        )
        orphaned = [ITEMS.c.batch_id == batch_id, or_(held_by_dead, expired)]
        if db.postgres:
            orphaned = [ITEMS.c.id.in_(lock_items_where(conn, *orphaned))]
        # Released first: the items made unconfirmed below then match no longer.
        released = conn.execute(
            update(ITEMS)
            .where(*orphaned, ITEMS.c.state != "sending")
            .values(worker_id=None, lease_expires_at=None)
        ).rowcount
        unconfirmed = conn.execute(
            update(ITEMS)
            .where(*orphaned, ITEMS.c.state == "sending")
            .values(
                state="unconfirmed",
                worker_id=None,
                lease_expires_at=None,
                error_message="the worker sending it stopped before the answer was recorded",
                updated_at=at,
            )
        ).rowcount
        return RecoveryCounts(unconfirmed=unconfirmed, released=released, dead_workers=len(dead))

    counts = db.write(work)
    if counts.unconfirmed or counts.released:
        log.info(
            "recovered",
            extra={
                "unconfirmed": counts.unconfirmed,
                "released": counts.released,
                "dead": counts.dead_workers,
            },
        )
    return counts


def claim(
    db: Database,
    batch_id: int,
    worker_id: str,
    *,
    states: Sequence[str],
    limit: int,
    lease_until: datetime,
    only: Collection[int] | None = None,
) -> list[ItemRecord]:
    """Take up to `limit` unclaimed items in `states`, in job order (among the ids
    `only`, when given: a canary claims its own items and no others)."""

    def work(conn: Connection) -> Sequence[Row[Any]]:
        free = or_(
            ITEMS.c.worker_id.is_(None),
            ITEMS.c.lease_expires_at.is_(None),
            ITEMS.c.lease_expires_at < db.clock(),
        )
        candidates = (
            select(ITEMS.c.id)
            .where(ITEMS.c.batch_id == batch_id, ITEMS.c.state.in_(states), free)
            .order_by(ITEMS.c.state, ITEMS.c.ordinal)
            .limit(limit)
        )
        if only is not None:
            candidates = candidates.where(ITEMS.c.id.in_(sorted(only)))
        if db.postgres:
            # Skip what another worker is claiming: claims never wait on each other.
            candidates = candidates.with_for_update(skip_locked=True)
        return conn.execute(
            update(ITEMS)
            .where(ITEMS.c.id.in_(candidates.scalar_subquery()))
            .values(worker_id=worker_id, lease_expires_at=lease_until)
            .returning(*ITEMS.c)
        ).all()

    records = [item_record(row) for row in db.write(work)]
    records.sort(key=lambda r: r.ordinal)
    return records


def stale_leases(db: Database, batch_ids: Sequence[int]) -> dict[int, int]:
    """Per batch, open items still marked as held by a worker whose lease expired."""
    if not batch_ids:
        return {}
    query = (
        select(ITEMS.c.batch_id, func.count())
        .where(
            ITEMS.c.batch_id.in_(list(batch_ids)),
            ITEMS.c.worker_id.is_not(None),
            ITEMS.c.lease_expires_at < db.clock(),
            ITEMS.c.state.in_(HELD_STATES),
        )
        .group_by(ITEMS.c.batch_id)
    )
    rows = db.read(lambda conn: conn.execute(query).all())
    return {int(batch_id): int(count) for batch_id, count in rows}


def held_elsewhere(db: Database, batch_id: int, worker_id: str) -> int:
    """Open items other workers hold under a live lease (they may come back)."""
    query = select(func.count()).where(
        ITEMS.c.batch_id == batch_id,
        ITEMS.c.state.in_(HELD_STATES),
        ITEMS.c.worker_id.is_not(None),
        ITEMS.c.worker_id != worker_id,
        ITEMS.c.lease_expires_at >= db.clock(),
    )
    return int(db.read(lambda conn: conn.scalar(query)) or 0)


def worker_record(row: Row[Any]) -> WorkerRecord:
    return WorkerRecord(
        id=row.id,
        batch_id=row.batch_id,
        host=row.host,
        pid=row.pid,
        pid_start=row.pid_start,
        in_flight=row.in_flight,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        stopped_at=row.stopped_at if row.stopped_at else None,
    )


def _update_items(
    db: Database, conn: Connection, where: list[ColumnElement[bool]], **values: Any
) -> None:
    """UPDATE the items matching `where`; on PostgreSQL after locking them in id order."""
    if db.postgres:
        ids = lock_items_where(conn, *where)
        if not ids:
            return
        where = [ITEMS.c.id.in_(ids)]
    conn.execute(update(ITEMS).where(*where).values(**values))
