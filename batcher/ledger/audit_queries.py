"""The SQL behind `batcher audit` and `batcher reconcile`.

Kept in batcher/ledger/ with the rest of the SQL: callers pass a `Ledger` and
get value objects back. Every credit figure is a sum of the append-only
`credit_events` rows, never of the cached counters on `batches`.

How a credit row counts, so that figures add up across groups and windows:
each row falls in the group of its own item (batch, model, resolution) and
its own time (UTC day); charges add to `credits_charged`, `items` (distinct)
and, when the project has no refund row at all, `images`; refunds add to
`credits_refunded` and `failures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    and_,
    case,
    distinct,
    func,
    literal_column,
    or_,
    select,
)

from batcher.ledger.store import BATCHES, CREDITS, ITEMS, Ledger

# The keys a credit report can be grouped by, in their documented order.
GROUP_KEYS: Final = ("batch", "model", "day", "resolution")

GroupValue = str | date | None


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
class KnownProject:
    """A project the ledger saw created (it has a charge row), with what it recorded."""

    batch_id: int
    batch: str
    item_id: int
    item_key: str
    project_id: str
    charged: int
    refunded: int  # 0 when no refund row exists


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


@dataclass(frozen=True, slots=True)
class CreditSnapshot:
    """Several groupings of the same credit rows, and the items in doubt, read together."""

    groupings: tuple[tuple[CreditGroup, ...], ...]  # one per grouping asked, in that order
    items_in_doubt: int


def credit_snapshot(
    ledger: Ledger, window: CreditWindow, groupings: Sequence[Sequence[str]]
) -> CreditSnapshot:
    """Every grouping in one read-only transaction, so that rows and totals agree even
    while a run is writing. An empty grouping gives one row of totals (zeros when empty)."""
    for group_by in groupings:
        unknown = [key for key in group_by if key not in GROUP_KEYS]
        if unknown:
            raise ValueError(f"unknown group keys: {unknown}")
    queries = [_credit_query(ledger.dialect, window, group_by) for group_by in groupings]
    # Reads go through the ledger's own transactions (same package), so database
    # errors become LedgerError exactly as for every other ledger call. SQLite's
    # transaction already holds the write lock (BEGIN IMMEDIATE); PostgreSQL needs
    # REPEATABLE READ for its statements to share one snapshot.
    with ledger.transaction() as conn:
        if ledger.dialect == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        results = [conn.execute(query).all() for query in queries]
        in_doubt = int(conn.scalar(_in_doubt_query(window)) or 0)
    return CreditSnapshot(
        groupings=tuple(
            tuple(_credit_group(group_by, row) for row in rows)
            for group_by, rows in zip(groupings, results, strict=True)
        ),
        items_in_doubt=in_doubt,
    )


def _credit_query(dialect: str, window: CreditWindow, group_by: Sequence[str]) -> Select[Any]:
    # A charge's project is refunded at most once (unique kind+project_id), so
    # this outer join never multiplies rows.
    refunds = CREDITS.alias("refunds")
    joined = (
        CREDITS.join(ITEMS, ITEMS.c.id == CREDITS.c.item_id)
        .join(BATCHES, BATCHES.c.id == CREDITS.c.batch_id)
        .outerjoin(
            refunds,
            and_(refunds.c.project_id == CREDITS.c.project_id, refunds.c.kind == "refund"),
        )
    )
    is_charge = CREDITS.c.kind == "charge"
    is_refund = CREDITS.c.kind == "refund"
    metrics = (
        func.coalesce(func.sum(case((is_charge, CREDITS.c.credits), else_=0)), 0),
        func.coalesce(func.sum(case((is_refund, CREDITS.c.credits), else_=0)), 0),
        func.coalesce(
            func.sum(case((and_(is_charge, refunds.c.id.is_(None)), ITEMS.c.image_count), else_=0)),
            0,
        ),
        func.count(distinct(case((is_charge, CREDITS.c.item_id), else_=None))),
        func.coalesce(func.sum(case((is_refund, 1), else_=0)), 0),
    )
    keys = [_key_column(key, dialect) for key in group_by]
    query = select(*keys, *metrics).select_from(joined).where(*_window_clauses(window))
    if keys:
        query = query.group_by(*keys, *_tiebreakers(group_by)).order_by(
            *(_order_column(key, dialect) for key in group_by)
        )
    return query


def _credit_group(group_by: Sequence[str], row: Row[Any]) -> CreditGroup:
    width = len(group_by)
    return CreditGroup(
        keys=tuple(
            _key_value(key, value) for key, value in zip(group_by, row[:width], strict=True)
        ),
        credits_charged=int(row[width]),
        credits_refunded=int(row[width + 1]),
        images=int(row[width + 2]),
        items=int(row[width + 3]),
        failures=int(row[width + 4]),
    )


def _in_doubt_query(window: CreditWindow) -> Select[Any]:
    clauses: list[ColumnElement[bool]] = [ITEMS.c.state == "unconfirmed"]
    if window.batch_id is not None:
        clauses.append(ITEMS.c.batch_id == window.batch_id)
    if window.since is not None:
        clauses.append(or_(ITEMS.c.sent_at.is_(None), ITEMS.c.sent_at >= window.since))
    if window.until is not None:
        clauses.append(or_(ITEMS.c.sent_at.is_(None), ITEMS.c.sent_at < window.until))
    return select(func.count()).select_from(ITEMS).where(*clauses)


def known_projects(ledger: Ledger, batch_id: int) -> list[KnownProject]:
    """Every project with a charge row in the batch, with its refund if recorded, in order."""
    refunds = CREDITS.alias("refunds")
    query = (
        select(
            CREDITS.c.batch_id,
            BATCHES.c.name,
            CREDITS.c.item_id,
            ITEMS.c.key,
            CREDITS.c.project_id,
            CREDITS.c.credits,
            func.coalesce(refunds.c.credits, 0),
        )
        .select_from(
            CREDITS.join(ITEMS, ITEMS.c.id == CREDITS.c.item_id)
            .join(BATCHES, BATCHES.c.id == CREDITS.c.batch_id)
            .outerjoin(
                refunds,
                and_(refunds.c.project_id == CREDITS.c.project_id, refunds.c.kind == "refund"),
            )
        )
        .where(CREDITS.c.batch_id == batch_id, CREDITS.c.kind == "charge")
        .order_by(CREDITS.c.id)
    )
    with ledger.transaction() as conn:
        rows = conn.execute(query).all()
    return [
        KnownProject(
            batch_id=int(row[0]),
            batch=str(row[1]),
            item_id=int(row[2]),
            item_key=str(row[3]),
            project_id=str(row[4]),
            charged=int(row[5]),
            refunded=int(row[6]),
        )
        for row in rows
    ]


def doubtful_items(ledger: Ledger, batch_ids: Sequence[int]) -> list[DoubtfulItem]:
    """Every unconfirmed item of these batches, in batch and job order."""
    if not batch_ids:
        return []
    query = (
        select(
            BATCHES.c.name,
            ITEMS.c.key,
            ITEMS.c.project_name,
            ITEMS.c.prompt,
            ITEMS.c.model,
            ITEMS.c.attempts,
            ITEMS.c.sent_at,
        )
        .select_from(ITEMS.join(BATCHES, BATCHES.c.id == ITEMS.c.batch_id))
        .where(ITEMS.c.batch_id.in_(list(batch_ids)), ITEMS.c.state == "unconfirmed")
        .order_by(ITEMS.c.batch_id, ITEMS.c.ordinal)
    )
    with ledger.transaction() as conn:
        rows = conn.execute(query).all()
    return [
        DoubtfulItem(
            batch=row.name,
            key=row.key,
            project_name=row.project_name,
            prompt=row.prompt,
            model=row.model,
            attempts=int(row.attempts),
            sent_at=row.sent_at,
        )
        for row in rows
    ]


# --------------------------------------------------------------------------- helpers


def _window_clauses(window: CreditWindow) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if window.batch_id is not None:
        clauses.append(CREDITS.c.batch_id == window.batch_id)
    if window.since is not None:
        clauses.append(CREDITS.c.created_at >= window.since)
    if window.until is not None:
        clauses.append(CREDITS.c.created_at < window.until)
    return clauses


def _utc_day(dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        # timestamptz -> the wall time in UTC, then its date: independent of the
        # session's TimeZone setting. 'UTC' is inlined, not bound: PostgreSQL
        # must see the same expression in SELECT and GROUP BY.
        return func.date(func.timezone(literal_column("'UTC'"), CREDITS.c.created_at))
    # SQLite holds naive UTC text ('YYYY-MM-DD HH:MM:SS...'), see UTCDateTime.
    return func.date(CREDITS.c.created_at)


def _key_column(key: str, dialect: str) -> ColumnElement[Any]:
    if key == "batch":
        return BATCHES.c.name.label("batch")
    if key == "model":
        return ITEMS.c.model.label("model")
    if key == "resolution":
        return ITEMS.c.resolution.label("resolution")
    return _utc_day(dialect).label("day")


def _tiebreakers(group_by: Sequence[str]) -> list[ColumnElement[Any]]:
    # Batches are ordered by creation (their id); names are unique, so grouping
    # by the id as well changes no group.
    return [BATCHES.c.id] if "batch" in group_by else []


def _order_column(key: str, dialect: str) -> ColumnElement[Any]:
    if key == "batch":
        return BATCHES.c.id
    if key == "resolution":
        # NULLs sort first in SQLite and last in PostgreSQL; make it the same everywhere.
        return func.coalesce(ITEMS.c.resolution, "")
    return _key_column(key, dialect)


def _key_value(key: str, value: Any) -> GroupValue:
    if key == "day" and isinstance(value, str):
        return date.fromisoformat(value[:10])
    if key == "day" and isinstance(value, datetime):
        return value.date()
    if value is None or isinstance(value, date):
        return value
    return str(value)
