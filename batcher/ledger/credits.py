"""Credit rows: refunds found after the fact, and the queries behind `status`,
`audit` and `reconcile`.

Every credit figure is a sum of the append-only `credit_events` rows, never of
the cached counters on `batches`. All of these are read transactions, so a
report never waits on a run that is writing.

How a credit row counts, so that figures add up across groups and windows:
each row falls in the group of its own item (batch, model, resolution) and
its own time (UTC day); charges add to `credits_charged` and `items`
(distinct), and the first charge of the project an item holds adds the
images saved for it (`items.files`); refunds add to `credits_refunded` and
`failures` (distinct projects). A project may have several rows of a kind:
each change of its `credits_charged` seen on a poll is one more.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
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

from batcher.ledger.tables import BATCHES, CREDITS, ITEMS, lock_items
from batcher.ledger.transactions import Database
from batcher.ledger.values import (
    GROUP_KEYS,
    ChargeSeen,
    CreditGroup,
    CreditSnapshot,
    CreditWindow,
    DoubtfulItem,
    GroupValue,
    KnownProject,
)
from batcher.ledger.writes import (
    Deltas,
    apply_charge_seen,
    apply_deltas,
    credit_row,
    insert_credits,
)

CHUNK = 1000


def record_refund(db: Database, batch_id: int, item_id: int, project_id: str, credits: int) -> bool:
    """A refund found after the fact (reconcile). False if it was already recorded."""
    if credits <= 0:
        return False

    def work(conn: Connection) -> bool:
        now = db.clock()
        row = credit_row(batch_id, item_id, "refund", credits, project_id, now)
        if not insert_credits(db, conn, [row]):
            return False
        deltas = Deltas()
        deltas.net[batch_id] -= credits
        apply_deltas(conn, deltas, now)
        return True

    return db.write(work)


def project_charges(db: Database, project_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(charged, refunded) per project id."""

    def work(conn: Connection) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for start in range(0, len(project_ids), CHUNK):
            chunk = list(project_ids[start : start + CHUNK])
            for project_id, kind, credits in conn.execute(
                select(CREDITS.c.project_id, CREDITS.c.kind, CREDITS.c.credits).where(
                    CREDITS.c.project_id.in_(chunk)
                )
            ):
                entry = found.setdefault(project_id, [0, 0])
                entry[0 if kind == "charge" else 1] += int(credits)
        return found

    return {pid: (charged, refunded) for pid, (charged, refunded) in db.read(work).items()}


def observed_charges(db: Database, batch_id: int) -> dict[tuple[str, str | None, int], int]:
    """The highest charge seen per (model, resolution, image_count) in this batch."""
    query = (
        select(ITEMS.c.model, ITEMS.c.resolution, ITEMS.c.image_count, func.max(CREDITS.c.credits))
        .select_from(CREDITS.join(ITEMS, ITEMS.c.id == CREDITS.c.item_id))
        .where(CREDITS.c.batch_id == batch_id, CREDITS.c.kind == "charge")
        .group_by(ITEMS.c.model, ITEMS.c.resolution, ITEMS.c.image_count)
    )
    rows = db.read(lambda conn: conn.execute(query).all())
    return {(m, r, int(n)): int(c) for m, r, n, c in rows}


def credit_snapshot(
    db: Database, window: CreditWindow, groupings: Sequence[Sequence[str]]
) -> CreditSnapshot:
    """Every grouping in one read transaction (one snapshot), so that rows and totals
    agree even while a run is writing. An empty grouping gives one row of totals
    (zeros when empty)."""
    for group_by in groupings:
        unknown = [key for key in group_by if key not in GROUP_KEYS]
        if unknown:
            raise ValueError(f"unknown group keys: {unknown}")
    queries = [_credit_query(db.dialect, window, group_by) for group_by in groupings]

    def work(conn: Connection) -> tuple[list[list[Row[Any]]], int]:
        results = [list(conn.execute(query).all()) for query in queries]
        return results, int(conn.scalar(_in_doubt_query(window)) or 0)

    results, in_doubt = db.read(work)
    return CreditSnapshot(
        groupings=tuple(
            tuple(_credit_group(group_by, row) for row in rows)
            for group_by, rows in zip(groupings, results, strict=True)
        ),
        items_in_doubt=in_doubt,
    )


def _credit_query(dialect: str, window: CreditWindow, group_by: Sequence[str]) -> Select[Any]:
    joined = CREDITS.join(ITEMS, ITEMS.c.id == CREDITS.c.item_id).join(
        BATCHES, BATCHES.c.id == CREDITS.c.batch_id
    )
    is_charge = CREDITS.c.kind == "charge"
    is_refund = CREDITS.c.kind == "refund"
    # Images are those saved (items.files), counted once per item: on the first
    # charge row of the project the item holds now (a render created again
    # after a refunded failure has older projects, which saved nothing).
    first_charge = and_(is_charge, CREDITS.c.seq == 0, CREDITS.c.project_id == ITEMS.c.project_id)
    saved = func.coalesce(_files_count(dialect), 0)
    metrics = (
        func.coalesce(func.sum(case((is_charge, CREDITS.c.credits), else_=0)), 0),
        func.coalesce(func.sum(case((is_refund, CREDITS.c.credits), else_=0)), 0),
        func.coalesce(func.sum(case((first_charge, saved), else_=0)), 0),
        func.count(distinct(case((is_charge, CREDITS.c.item_id), else_=None))),
        func.count(distinct(case((is_refund, CREDITS.c.project_id), else_=None))),
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


def known_projects(db: Database, batch_id: int) -> list[KnownProject]:
    """Every project of the batch, in order of its first credit row: each with a
    credit row (charged and refunded summed over its rows), then each that an
    item holds without one (its charge is still unknown)."""
    is_charge = CREDITS.c.kind == "charge"
    summed = (
        select(
            CREDITS.c.project_id,
            func.min(CREDITS.c.item_id),
            func.sum(case((is_charge, CREDITS.c.credits), else_=0)),
            func.sum(case((is_charge, 0), else_=CREDITS.c.credits)),
            func.min(CREDITS.c.id).label("first"),
        )
        .where(CREDITS.c.batch_id == batch_id)
        .group_by(CREDITS.c.project_id)
        .subquery()
    )
    query = (
        select(ITEMS.c.id, ITEMS.c.key, *summed.c)
        .select_from(summed.join(ITEMS, ITEMS.c.id == summed.c[1]))
        .order_by(summed.c.first)
    )
    recorded = CREDITS.alias("recorded")
    uncharged = (
        select(ITEMS.c.id, ITEMS.c.key, ITEMS.c.project_id)
        .where(
            ITEMS.c.batch_id == batch_id,
            ITEMS.c.project_id.is_not(None),
            ~select(recorded.c.id).where(recorded.c.project_id == ITEMS.c.project_id).exists(),
        )
        .order_by(ITEMS.c.ordinal)
    )

    def work(conn: Connection) -> tuple[list[Any], list[Any], str]:
        name = conn.scalar(select(BATCHES.c.name).where(BATCHES.c.id == batch_id))
        return list(conn.execute(query).all()), list(conn.execute(uncharged).all()), str(name)

    rows, unknown, name = db.read(work)
    found = [
        KnownProject(
            batch_id=batch_id,
            batch=name,
            item_id=int(row[0]),
            item_key=str(row[1]),
            project_id=str(row[2]),
            charged=int(row[4] or 0),
            refunded=int(row[5] or 0),
        )
        for row in rows
    ]
    found.extend(
        KnownProject(
            batch_id=batch_id,
            batch=name,
            item_id=int(row[0]),
            item_key=str(row[1]),
            project_id=str(row[2]),
            charged=0,
            refunded=0,
            charge_known=False,
        )
        for row in unknown
    )
    return found


def record_charge_seen(db: Database, op: ChargeSeen) -> int:
    """What the API says a project cost now, recorded as the difference from the
    ledger's net for it (a charge or a refund row); the credits recorded, signed."""

    def work(conn: Connection) -> int:
        now = db.clock()
        if db.postgres:
            lock_items(conn, [op.item_id])
        deltas = Deltas()
        change = apply_charge_seen(db, conn, op, deltas, now)
        apply_deltas(conn, deltas, now)
        return change

    return db.write(work)


def doubtful_items(db: Database, batch_ids: Sequence[int]) -> list[DoubtfulItem]:
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
    rows = db.read(lambda conn: conn.execute(query).all())
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


def _files_count(dialect: str) -> ColumnElement[Any]:
    """How many files `items.files` lists; NULL when it is not a list."""
    if dialect == "postgresql":
        # json_array_length refuses a JSON null or object instead of answering NULL.
        return case(
            (func.json_typeof(ITEMS.c.files) == "array", func.json_array_length(ITEMS.c.files)),
            else_=None,
        )
    return func.json_array_length(ITEMS.c.files)  # SQLite: 0 for a non-array


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
