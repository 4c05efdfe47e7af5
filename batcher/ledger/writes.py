"""The runner's writes: a group of operations committed in one transaction.

Each operation (`BeginSend`, `Created`, ...) is one state change of one item,
committed before its caller goes on (intent before the call, outcome after
it); `writer.LedgerWriter` gathers the operations of many tasks into groups,
and `apply` commits a group with one executemany per kind of statement. The
statements are built once: SQLAlchemy then reuses their compiled form, where
a statement built per call would be keyed and looked up (or compiled) every
time. That is what makes a durable ledger as fast as no ledger.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.sql.elements import BindParameter

from batcher.errors import LedgerError
from batcher.ledger.models import UTCDateTime
from batcher.ledger.tables import BATCHES, CREDITS, ITEMS, lock_items
from batcher.ledger.transactions import Database
from batcher.ledger.values import (
    BeginSend,
    ChargeSeen,
    Created,
    LedgerOp,
    ReleaseClaims,
    RenderFinished,
    SendFailed,
    files_to_json,
)
from batcher.scrubber import scrub_optional

log = logging.getLogger(__name__)


@dataclass
class Deltas:
    """Per-batch changes to the budget counters accumulated over one transaction."""

    net: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    reserved: dict[int, int] = field(default_factory=lambda: defaultdict(int))


# --------------------------------------------------------------------------- statements

_NOW: BindParameter[datetime] = bindparam("now", type_=UTCDateTime())

_BEGIN_SEND = (
    update(ITEMS)
    .where(
        ITEMS.c.id == bindparam("item_id"),
        ITEMS.c.state == "pending",
        ITEMS.c.worker_id == bindparam("worker"),
    )
    .values(
        state="sending",
        attempts=ITEMS.c.attempts + 1,
        credits_reserved=bindparam("reserve"),
        sent_at=_NOW,
        updated_at=_NOW,
    )
)

_SENT_NOW = select(ITEMS.c.id).where(
    ITEMS.c.id.in_(bindparam("item_ids", expanding=True)),
    ITEMS.c.state == "sending",
    ITEMS.c.sent_at == _NOW,
)

_CREATED = (
    update(ITEMS)
    .where(ITEMS.c.id == bindparam("item_id"))
    .values(
        state="submitted",
        project_id=bindparam("project_id"),
        # Kept when the charge is unknown: the project may be charged.
        credits_reserved=bindparam("still_reserved"),
        failure=None,
        error_status=None,
        error_code=None,
        error_message=bindparam("note"),
        submitted_at=_NOW,
        updated_at=_NOW,
    )
)
_CREATED_RELEASED = _CREATED.values(worker_id=None, lease_expires_at=None)

_SEND_FAILED = (
    update(ITEMS)
    .where(ITEMS.c.id == bindparam("item_id"))
    .values(
        state=bindparam("state"),
        failure=bindparam("failure"),
        error_status=bindparam("status"),
        error_message=bindparam("message"),
        credits_reserved=bindparam("reserved"),
        finished_at=bindparam("finished_at"),
        updated_at=_NOW,
    )
)

_RENDER_FINISHED = (
    update(ITEMS)
    .where(ITEMS.c.id == bindparam("item_id"))
    .values(
        state=bindparam("state"),
        failure=bindparam("failure"),
        error_code=bindparam("code"),
        error_message=bindparam("message"),
        files=bindparam("files"),
        render_failures=ITEMS.c.render_failures + bindparam("render_failure"),
        finished_at=bindparam("finished_at"),
        updated_at=_NOW,
    )
)

_LOOK_BACK = select(
    ITEMS.c.id, ITEMS.c.state, ITEMS.c.sent_at, ITEMS.c.worker_id, ITEMS.c.updated_at
).where(ITEMS.c.id.in_(bindparam("item_ids", expanding=True)))

_RELEASE = (
    update(ITEMS)
    .where(ITEMS.c.id.in_(bindparam("item_ids", expanding=True)), ITEMS.c.state != "sending")
    .values(worker_id=None, lease_expires_at=None)
)

_BATCH_COUNTERS = (
    update(BATCHES)
    .where(BATCHES.c.id == bindparam("batch"))
    .values(
        credits_net=BATCHES.c.credits_net + bindparam("net"),
        credits_reserved=BATCHES.c.credits_reserved + bindparam("reserved"),
        updated_at=_NOW,
    )
)

_BUDGET = select(BATCHES.c.budget, BATCHES.c.credits_net, BATCHES.c.credits_reserved).where(
    BATCHES.c.id == bindparam("batch")
)
# Every worker's reservation reads and moves the same counters: on PostgreSQL
# lock the row (FOR NO KEY UPDATE, which credit rows' foreign keys do not wait
# on); SQLite's write lock is already held.
_BUDGET_LOCKED = _BUDGET.with_for_update(key_share=True)

_RECORDED = select(CREDITS.c.project_id).where(
    CREDITS.c.kind == bindparam("kind"),
    CREDITS.c.project_id.in_(bindparam("projects", expanding=True)),
)

# A project's credit rows: what the ledger says it cost so far, and how many
# rows of each kind it has (the next row's `seq`).
_PROJECT_CREDITS = select(
    func.coalesce(
        func.sum(case((CREDITS.c.kind == "charge", CREDITS.c.credits), else_=-CREDITS.c.credits)),
        0,
    ),
    func.count(case((CREDITS.c.kind == "charge", 1), else_=None)),
    func.count(case((CREDITS.c.kind == "refund", 1), else_=None)),
).where(CREDITS.c.project_id == bindparam("project_id"))

_ITEM_RESERVED = select(ITEMS.c.credits_reserved, ITEMS.c.project_id).where(
    ITEMS.c.id == bindparam("item_id")
)
_FREE_RESERVED = (
    update(ITEMS)
    .where(ITEMS.c.id == bindparam("item_id"))
    .values(credits_reserved=0, updated_at=_NOW)
)

_INSERT_CREDIT = {
    "sqlite": sqlite.insert(CREDITS).on_conflict_do_nothing(),
    "postgresql": postgresql.insert(CREDITS).on_conflict_do_nothing(),
}


# --------------------------------------------------------------------------- apply


def apply(
    db: Database, ops: Sequence[LedgerOp], *, at: datetime | None = None, again: bool = False
) -> list[bool | int | None]:
    """Commit a group of operations in one transaction.

    Returns, per operation, True/False for `BeginSend` (accepted or refused
    for budget) and None for the others. Should one row sink the group (a
    constraint), each operation is applied alone so that it cannot sink the rest.

    `at`: the group's timestamp, the same on every try. `again`: an earlier try
    failed, and may have committed all the same (a PostgreSQL connection lost
    after COMMIT was sent): if its timestamp is on the items, the group is not
    applied twice, and its results are read back.
    """
    if not ops:
        return []
    now = at or db.clock()

    def work(conn: Connection) -> list[bool | int | None]:
        if again:
            done = _committed_before(conn, ops, now)
            if done is not None:
                return done
        return apply_in(db, conn, ops, now=now)

    try:
        return db.write(work)
    except LedgerError as exc:
        if len(ops) == 1 or not isinstance(exc.__cause__, IntegrityError | DataError):
            raise
        log.warning(
            "group commit of %d operations failed (%s); applying them one by one",
            len(ops),
            exc,
            extra={"event": "ledger.group_split", "operations": len(ops)},
        )
    return [result for op in ops for result in apply(db, [op], at=now, again=again)]


def apply_in(
    db: Database, conn: Connection, ops: Sequence[LedgerOp], *, now: datetime | None = None
) -> list[bool | int | None]:
    """The operations of `apply`, inside a transaction the caller holds (the rescue file)."""
    now = now or db.clock()
    if db.postgres:
        lock_items(conn, [item_id for op in ops for item_id in _item_ids(op)])
    deltas = Deltas()
    by_kind: dict[type, list[tuple[int, Any]]] = defaultdict(list)
    for index, op in enumerate(ops):
        by_kind[type(op)].append((index, op))
    results: list[bool | int | None] = [None] * len(ops)
    # Settlements first, so budget they free is available to this group's reservations.
    _apply_created(db, conn, [op for _, op in by_kind[Created]], deltas, now)
    for index, op in by_kind[ChargeSeen]:
        results[index] = apply_charge_seen(db, conn, op, deltas, now)
    _apply_send_failed(conn, [op for _, op in by_kind[SendFailed]], deltas, now)
    _apply_render_finished(db, conn, [op for _, op in by_kind[RenderFinished]], deltas, now)
    released = [item_id for _, op in by_kind[ReleaseClaims] for item_id in op.item_ids]
    if released:
        conn.execute(_RELEASE, {"item_ids": released})
    accepted = _apply_begin_send(db, conn, [op for _, op in by_kind[BeginSend]], deltas, now)
    for (index, _), ok in zip(by_kind[BeginSend], accepted, strict=True):
        results[index] = ok
    apply_deltas(conn, deltas, now)
    return results


def _committed_before(
    conn: Connection, ops: Sequence[LedgerOp], now: datetime
) -> list[bool | int | None] | None:
    """The results of this group if an earlier try of it committed (its timestamp
    is on its items: every operation but ReleaseClaims sets updated_at), else None."""
    ids = [op.item_id for op in ops if not isinstance(op, ReleaseClaims)]
    if not ids:
        return None
    rows = {row.id: row for row in conn.execute(_LOOK_BACK, {"item_ids": ids})}
    if not any(row.updated_at == now for row in rows.values()):
        return None
    log.warning(
        "a group commit that seemed lost had reached the ledger; not applied twice",
        extra={"event": "ledger.commit_found", "operations": len(ops)},
    )
    results: list[bool | int | None] = []
    for op in ops:
        row = rows.get(op.item_id) if isinstance(op, BeginSend) else None
        if row is None or not isinstance(op, BeginSend):
            results.append(None)
        elif row.state == "sending" and row.sent_at == now:
            results.append(True)
        else:
            # Still ours and not begun: refused for budget; otherwise another's.
            results.append(False if row.worker_id == op.worker_id else None)
    return results


def _item_ids(op: LedgerOp) -> tuple[int, ...]:
    return op.item_ids if isinstance(op, ReleaseClaims) else (op.item_id,)


def _apply_begin_send(
    db: Database, conn: Connection, ops: list[BeginSend], deltas: Deltas, now: datetime
) -> list[bool | int | None]:
    """True: send may proceed. False: no room in the budget. None: the item is
    no longer this worker's (its lease lapsed and another worker took it)."""
    if not ops:
        return []
    accepted: list[bool | int | None] = [True] * len(ops)
    query = _BUDGET_LOCKED if db.postgres else _BUDGET
    for batch_id in sorted({op.batch_id for op in ops if op.budgeted}):
        budget, net, reserved = conn.execute(query, {"batch": batch_id}).one()
        if budget is None:
            continue
        headroom = budget - net - reserved - deltas.net[batch_id] - deltas.reserved[batch_id]
        for index, op in enumerate(ops):
            if op.batch_id != batch_id:
                continue
            if op.reserve <= headroom:
                headroom -= op.reserve
            else:
                accepted[index] = False
    chosen = [op for op, ok in zip(ops, accepted, strict=True) if ok]
    if not chosen:
        return accepted
    updated = conn.execute(
        _BEGIN_SEND,
        [
            {"item_id": op.item_id, "worker": op.worker_id, "reserve": op.reserve, "now": now}
            for op in chosen
        ],
    ).rowcount
    if updated == len(chosen):
        sent = {op.item_id for op in chosen}
    else:
        # Some item was no longer this worker's (a lapsed lease): find which.
        sent = set(conn.scalars(_SENT_NOW, {"item_ids": [op.item_id for op in chosen], "now": now}))
    for index, op in enumerate(ops):
        if not accepted[index]:
            continue
        if op.item_id in sent:
            deltas.reserved[op.batch_id] += op.reserve
        else:
            accepted[index] = None
    return accepted


def _apply_created(
    db: Database, conn: Connection, ops: list[Created], deltas: Deltas, now: datetime
) -> None:
    if not ops:
        return

    def row(op: Created) -> dict[str, Any]:
        return {
            "item_id": op.item_id,
            "project_id": op.project_id,
            "still_reserved": op.reserved if op.credits_charged is None else 0,
            "note": scrub_optional(op.note),
            "now": now,
        }

    kept = [row(op) for op in ops if op.keep_claim]
    released = [row(op) for op in ops if not op.keep_claim]
    if kept:
        conn.execute(_CREATED, kept)
    if released:
        conn.execute(_CREATED_RELEASED, released)
    # A project id is new by construction: the API just made it. The unique
    # constraint still guards against recording it twice.
    charged = [op for op in ops if op.credits_charged is not None]
    if charged:
        conn.execute(
            _INSERT_CREDIT[db.dialect],
            [
                credit_row(
                    op.batch_id, op.item_id, "charge", op.credits_charged or 0, op.project_id, now
                )
                for op in charged
            ],
        )
    for op in charged:
        deltas.net[op.batch_id] += op.credits_charged or 0
        deltas.reserved[op.batch_id] -= op.reserved


def apply_charge_seen(
    db: Database, conn: Connection, op: ChargeSeen, deltas: Deltas, now: datetime
) -> int:
    """Record the difference between what the API says the project cost and the
    ledger's net for it, as one charge or refund row; free the item's
    reservation if it still held one for this project. Returns the difference
    recorded (0 when they agree)."""
    net, charges, refunds = conn.execute(_PROJECT_CREDITS, {"project_id": op.project_id}).one()
    change = op.credits_charged - int(net)
    if change:
        kind, seq = ("charge", int(charges)) if change > 0 else ("refund", int(refunds))
        row = credit_row(op.batch_id, op.item_id, kind, abs(change), op.project_id, now)
        row["seq"] = seq
        inserted = conn.execute(_INSERT_CREDIT[db.dialect], row).rowcount
        if inserted:
            deltas.net[op.batch_id] += change
        else:
            change = 0  # another recorder wrote this very change first
    reserved, project_id = conn.execute(_ITEM_RESERVED, {"item_id": op.item_id}).one()
    if reserved and project_id == op.project_id:
        conn.execute(_FREE_RESERVED, {"item_id": op.item_id, "now": now})
        deltas.reserved[op.batch_id] -= int(reserved)
    return change


def _apply_send_failed(
    conn: Connection, ops: list[SendFailed], deltas: Deltas, now: datetime
) -> None:
    if not ops:
        return
    conn.execute(
        _SEND_FAILED,
        [
            {
                "item_id": op.item_id,
                "state": op.state,
                "failure": op.failure,
                "status": op.status,
                "message": scrub_optional(op.message),
                # An unconfirmed create may have been charged: keep its
                # reservation so the budget still counts it.
                "reserved": op.reserved if op.state == "unconfirmed" else 0,
                "finished_at": now if op.state == "failed" else None,
                "now": now,
            }
            for op in ops
        ],
    )
    for op in ops:
        if op.state != "unconfirmed":
            deltas.reserved[op.batch_id] -= op.reserved


def _apply_render_finished(
    db: Database, conn: Connection, ops: list[RenderFinished], deltas: Deltas, now: datetime
) -> None:
    if not ops:
        return
    conn.execute(
        _RENDER_FINISHED,
        [
            {
                "item_id": op.item_id,
                "state": op.state,
                "failure": op.failure,
                "code": scrub_optional(op.code),
                "message": scrub_optional(op.message),
                "files": files_to_json(op.files) if op.files is not None else None,
                "render_failure": 1 if op.count_render_failure else 0,
                "finished_at": now if op.state in ("complete", "failed") else None,
                "now": now,
            }
            for op in ops
        ],
    )
    refunds = [op for op in ops if op.refund > 0]
    recorded = insert_credits(
        db,
        conn,
        [
            credit_row(op.batch_id, op.item_id, "refund", op.refund, op.project_id, now)
            for op in refunds
        ],
    )
    for op in refunds:
        if op.project_id in recorded:
            deltas.net[op.batch_id] -= op.refund


# --------------------------------------------------------------------------- credit rows


def credit_row(
    batch_id: int, item_id: int, kind: str, credits: int, project_id: str, now: datetime
) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "item_id": item_id,
        "kind": kind,
        "credits": credits,
        "project_id": project_id,
        "seq": 0,
        "created_at": now,
    }


def insert_credits(db: Database, conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """Insert credit rows of one kind, skipping any already recorded; returns the
    project ids inserted."""
    if not rows:
        return set()
    already = set(
        conn.scalars(
            _RECORDED, {"kind": rows[0]["kind"], "projects": [r["project_id"] for r in rows]}
        )
    )
    fresh = [r for r in rows if r["project_id"] not in already]
    if fresh:
        conn.execute(_INSERT_CREDIT[db.dialect], fresh)
    return {r["project_id"] for r in fresh}


def apply_deltas(conn: Connection, deltas: Deltas, now: datetime) -> None:
    for batch_id in sorted(set(deltas.net) | set(deltas.reserved)):
        net, reserved = deltas.net[batch_id], deltas.reserved[batch_id]
        if net or reserved:
            conn.execute(
                _BATCH_COUNTERS, {"batch": batch_id, "net": net, "reserved": reserved, "now": now}
            )
