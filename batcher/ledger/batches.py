"""Batches and their items: creating, syncing with the job file, requeueing for a
resume, and the counts and pages the run and the reports read."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, Select, and_, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from batcher.jobfile.items import ItemSettings, JobItem
from batcher.ledger.tables import (
    BATCHES,
    CREDITS,
    ITEMS,
    lock_items_where,
    of_kind,
    settings_columns,
)
from batcher.ledger.transactions import Database
from batcher.ledger.values import (
    FAILURE_DOWNLOAD,
    FAILURE_LOST,
    FAILURE_REFUSED,
    FAILURE_RENDER,
    FAILURE_TRANSIENT,
    STATES,
    BatchRecord,
    BatchSummary,
    Demand,
    ItemRecord,
    RequeueCounts,
    SyncResult,
    files_from_json,
    vars_from_json,
)

INSERT_CHUNK = 1000

# ON CONFLICT DO NOTHING: two runs of one job started at once (cron overlap on
# PostgreSQL) both create its batch and add its items; the second keeps the first's.
_NEW_ITEMS = ["batch_id", "key"]
_INSERT_ITEM = {
    "sqlite": sqlite.insert(ITEMS).on_conflict_do_nothing(index_elements=_NEW_ITEMS),
    "postgresql": postgresql.insert(ITEMS).on_conflict_do_nothing(index_elements=_NEW_ITEMS),
}
_INSERT_BATCH = {
    "sqlite": sqlite.insert(BATCHES).on_conflict_do_nothing(index_elements=["name"]),
    "postgresql": postgresql.insert(BATCHES).on_conflict_do_nothing(index_elements=["name"]),
}


def get_batch(db: Database, name: str) -> BatchRecord | None:
    row = db.read(lambda conn: conn.execute(select(BATCHES).where(BATCHES.c.name == name)).first())
    return batch_record(row) if row else None


def get_batch_by_id(db: Database, batch_id: int) -> BatchRecord:
    row = db.read(lambda conn: conn.execute(select(BATCHES).where(BATCHES.c.id == batch_id)).one())
    return batch_record(row)


def batch_names(db: Database) -> list[str]:
    return db.read(lambda conn: list(conn.scalars(select(BATCHES.c.name).order_by(BATCHES.c.id))))


def open_batch(
    db: Database,
    name: str,
    *,
    job_path: str | None,
    job_hash: str | None,
    budget: int | None,
    settings: Mapping[str, Any],
) -> tuple[BatchRecord, bool]:
    def work(conn: Connection) -> tuple[Row[Any], bool]:
        now = db.clock()
        row = conn.execute(select(BATCHES).where(BATCHES.c.name == name)).first()
        if row is None:
            conn.execute(
                _INSERT_BATCH[db.dialect].values(
                    name=name,
                    job_path=job_path,
                    job_hash=job_hash,
                    budget=budget,
                    settings=dict(settings),
                    credits_net=0,
                    credits_reserved=0,
                    created_at=now,
                    updated_at=now,
                )
            )
        else:
            conn.execute(
                update(BATCHES)
                .where(BATCHES.c.id == row.id)
                .values(
                    job_path=job_path or row.job_path,
                    job_hash=job_hash or row.job_hash,
                    budget=budget,
                    settings={**row.settings, **settings},
                    updated_at=now,
                    finished_at=None,
                )
            )
        fresh = conn.execute(select(BATCHES).where(BATCHES.c.name == name)).one()
        return fresh, row is None

    fresh, created = db.write(work)
    return batch_record(fresh), created


def update_settings(db: Database, batch_id: int, settings: Mapping[str, Any]) -> None:
    def work(conn: Connection) -> None:
        current = conn.scalar(select(BATCHES.c.settings).where(BATCHES.c.id == batch_id))
        conn.execute(
            update(BATCHES)
            .where(BATCHES.c.id == batch_id)
            .values(settings={**(current or {}), **settings})
        )

    db.write(work)


def set_batch(db: Database, batch_id: int, **values: Any) -> None:
    """Set columns of one batch row (budget, shared limits, finished_at...)."""
    db.write(
        lambda conn: conn.execute(update(BATCHES).where(BATCHES.c.id == batch_id).values(values))
    )


def mark_finished(db: Database, batch_id: int) -> None:
    now = db.clock()
    set_batch(db, batch_id, finished_at=now, updated_at=now)


def sync_items(
    db: Database,
    batch_id: int,
    items: Iterable[JobItem],
    *,
    estimate: Callable[[ItemSettings], tuple[int, bool]],
    project_name: Callable[[JobItem], str],
) -> SyncResult:
    """Add the job's items that the batch lacks, in one transaction.

    Items already in the batch are left exactly as they are (their state is
    the truth). Never-sent items that are no longer in the job file are
    dropped, so editing a prompt and re-running does not also send the old
    text. Streams: only keys are held in memory, never the prompts.
    """

    def work(conn: Connection) -> SyncResult:
        now = db.clock()
        existing = set(conn.scalars(select(ITEMS.c.key).where(ITEMS.c.batch_id == batch_id)))
        seen: set[str] = set()
        added = 0
        chunk: list[dict[str, Any]] = []
        for item in items:
            seen.add(item.key)
            if item.key in existing:
                continue
            credits, exact = estimate(item.settings)
            chunk.append(_item_row(batch_id, item, credits, exact, project_name(item), now))
            if len(chunk) >= INSERT_CHUNK:
                added += _insert_new_items(db, conn, chunk)
                chunk = []
        if chunk:
            added += _insert_new_items(db, conn, chunk)
        stale = sorted(existing - seen)
        dropped = 0
        for start in range(0, len(stale), INSERT_CHUNK):
            dropped += conn.execute(
                delete(ITEMS).where(
                    ITEMS.c.batch_id == batch_id,
                    ITEMS.c.key.in_(stale[start : start + INSERT_CHUNK]),
                    ITEMS.c.state == "pending",
                    ITEMS.c.attempts == 0,
                    ITEMS.c.worker_id.is_(None),
                )
            ).rowcount
        conn.execute(update(BATCHES).where(BATCHES.c.id == batch_id).values(updated_at=now))
        return SyncResult(added=added, kept=len(existing & seen), dropped=dropped)

    # Not run twice: `items` may be a stream, and a second pass would see it empty.
    return db.write(work, retry=False)


def add_items(
    db: Database,
    batch_id: int,
    items: Sequence[JobItem],
    *,
    estimate: Callable[[ItemSettings], tuple[int, bool]],
    project_name: Callable[[JobItem], str],
    redo_of: Mapping[str, int],
) -> SyncResult:
    """Add items to a batch without touching the others (what `rerun` does; a job
    file's run uses `sync_items`), in one transaction: each new item with the
    id of the item it redoes (`redo_of`, by new key), so a rerun is never
    recorded without its link. Keys already in the batch are kept as they are.
    """

    def work(conn: Connection) -> SyncResult:
        now = db.clock()
        keys = [item.key for item in items]
        existing = set(
            conn.scalars(
                select(ITEMS.c.key).where(ITEMS.c.batch_id == batch_id, ITEMS.c.key.in_(keys))
            )
        )
        rows = []
        for item in items:
            if item.key in existing:
                continue
            credits, exact = estimate(item.settings)
            row = _item_row(batch_id, item, credits, exact, project_name(item), now)
            row["redo_of_item_id"] = redo_of.get(item.key)
            rows.append(row)
            existing.add(item.key)
        for start in range(0, len(rows), INSERT_CHUNK):
            conn.execute(insert(ITEMS), rows[start : start + INSERT_CHUNK])
        conn.execute(update(BATCHES).where(BATCHES.c.id == batch_id).values(updated_at=now))
        return SyncResult(added=len(rows), kept=len(items) - len(rows), dropped=0)

    return db.write(work)


def drop_unsent(db: Database, batch_id: int, keys: Sequence[str]) -> int:
    """Delete the items of `keys` that were never sent and nobody holds (a rerun
    refused before sending takes back what it added); how many went."""
    if not keys:
        return 0

    def work(conn: Connection) -> int:
        dropped = 0
        for start in range(0, len(keys), INSERT_CHUNK):
            dropped += conn.execute(
                delete(ITEMS).where(
                    ITEMS.c.batch_id == batch_id,
                    ITEMS.c.key.in_(list(keys[start : start + INSERT_CHUNK])),
                    ITEMS.c.state == "pending",
                    ITEMS.c.attempts == 0,
                    ITEMS.c.worker_id.is_(None),
                )
            ).rowcount
        return dropped

    return db.write(work)


def requeue(
    db: Database, batch_id: int, *, retry_failed: bool, resend_unconfirmed: bool
) -> RequeueCounts:
    """Make retryable items eligible again, as `resume` promises.

    Refusals other than 429/5xx are retried only with `retry_failed`;
    unconfirmed items only with `resend_unconfirmed` (they may be paid for).
    """
    retryable = [FAILURE_TRANSIENT, FAILURE_RENDER]
    if retry_failed:
        # A lost project (404, canceled) was paid and not refunded: only the
        # user's word creates it again.
        retryable.extend((FAILURE_REFUSED, FAILURE_LOST))
    of_batch = ITEMS.c.batch_id == batch_id

    def work(conn: Connection) -> RequeueCounts:
        now = db.clock()
        if db.postgres:
            # In id order first, as a running worker's commits lock them (tables.py).
            lock_items_where(conn, of_batch, ITEMS.c.state.in_(("failed", "unconfirmed")))
        retried = conn.execute(
            update(ITEMS)
            .where(of_batch, ITEMS.c.state == "failed", ITEMS.c.failure.in_(retryable))
            .values(state="pending", failure=None, render_failures=0, updated_at=now)
        ).rowcount
        repoll = conn.execute(
            update(ITEMS)
            .where(
                of_batch,
                ITEMS.c.state == "failed",
                ITEMS.c.failure == FAILURE_DOWNLOAD,
                ITEMS.c.project_id.is_not(None),
            )
            .values(state="submitted", failure=None, updated_at=now)
        ).rowcount
        resend = 0
        if resend_unconfirmed:
            resend = conn.execute(
                update(ITEMS)
                .where(of_batch, ITEMS.c.state == "unconfirmed", ITEMS.c.worker_id.is_(None))
                .values(state="pending", updated_at=now)
            ).rowcount
            # Their reservations were held because they might have been charged;
            # the re-send reserves afresh.
            _recount_reserved(conn, batch_id)
        return RequeueCounts(retried=retried, repoll=repoll, resend=resend)

    return db.write(work)


def state_counts(db: Database, batch_id: int) -> dict[str, int]:
    rows = db.read(
        lambda conn: conn.execute(
            select(ITEMS.c.state, func.count())
            .where(ITEMS.c.batch_id == batch_id)
            .group_by(ITEMS.c.state)
        ).all()
    )
    counts = dict.fromkeys(STATES, 0)
    counts.update({state: int(n) for state, n in rows})
    return counts


def items(
    db: Database, batch_id: int, *, states: Sequence[str] | None = None, page: int = 1000
) -> Iterator[ItemRecord]:
    """Every item of a batch (optionally in some states), page by page, one read each."""
    last_id = 0
    while True:
        query = (
            select(ITEMS)
            .where(ITEMS.c.batch_id == batch_id, ITEMS.c.id > last_id)
            .order_by(ITEMS.c.id)
            .limit(page)
        )
        if states is not None:
            query = query.where(ITEMS.c.state.in_(states))
        rows = db.read(_all_rows(query))
        if not rows:
            return
        for row in rows:
            yield item_record(row)
        last_id = rows[-1].id


def pending_demand(db: Database, batch_id: int, *, samples: int = 10) -> list[Demand]:
    """What the pending items of a batch ask for, grouped for preflight checks."""
    group = (ITEMS.c.model, ITEMS.c.resolution, ITEMS.c.image_count)
    pending = and_(ITEMS.c.batch_id == batch_id, ITEMS.c.state == "pending")

    def work(conn: Connection) -> list[Demand]:
        rows = conn.execute(
            select(*group, func.count(), func.sum(ITEMS.c.estimate))
            .where(pending)
            .group_by(*group)
            .order_by(*group)
        ).all()
        demand: list[Demand] = []
        for model, resolution, image_count, count, total in rows:
            examples = conn.execute(
                select(ITEMS.c.source_path, ITEMS.c.source_line, ITEMS.c.prompt)
                .where(
                    pending,
                    of_kind(model, resolution, image_count),
                )
                .order_by(ITEMS.c.ordinal)
                .limit(samples)
            ).all()
            demand.append(
                Demand(
                    settings=ItemSettings(model, resolution, "", "", int(image_count)),
                    items=int(count),
                    estimate=int(total or 0),
                    samples=tuple(
                        f"{path}:{line}: {_excerpt(prompt)}" for path, line, prompt in examples
                    ),
                )
            )
        return demand

    return db.read(work)


def batch_summaries(db: Database, name: str | None = None) -> list[BatchSummary]:
    """Per batch (all, or the one called `name`): counts per state and credit sums."""
    batches_query = select(BATCHES).order_by(BATCHES.c.id)
    if name is not None:
        batches_query = batches_query.where(BATCHES.c.name == name)

    def work(
        conn: Connection,
    ) -> tuple[Sequence[Row[Any]], dict[int, dict[str, int]], dict[tuple[int, str], int]]:
        batches = conn.execute(batches_query).all()
        ids = [b.id for b in batches]
        states: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATES, 0))
        if not ids:
            return batches, states, {}
        for batch_id, state, count in conn.execute(
            select(ITEMS.c.batch_id, ITEMS.c.state, func.count())
            .where(ITEMS.c.batch_id.in_(ids))
            .group_by(ITEMS.c.batch_id, ITEMS.c.state)
        ):
            states[batch_id][state] = int(count)
        credits: dict[tuple[int, str], int] = {
            (batch_id, kind): int(total)
            for batch_id, kind, total in conn.execute(
                select(CREDITS.c.batch_id, CREDITS.c.kind, func.sum(CREDITS.c.credits))
                .where(CREDITS.c.batch_id.in_(ids))
                .group_by(CREDITS.c.batch_id, CREDITS.c.kind)
            )
        }
        return batches, states, credits

    batches, states, credits = db.read(work)
    return [
        BatchSummary(
            id=b.id,
            name=b.name,
            items=sum(states[b.id].values()),
            states=dict(states[b.id]),
            credits_charged=credits.get((b.id, "charge"), 0),
            credits_refunded=credits.get((b.id, "refund"), 0),
            budget=b.budget,
            created_at=b.created_at,
            finished_at=b.finished_at if b.finished_at else None,
        )
        for b in batches
    ]


# --------------------------------------------------------------------------- rows


def batch_record(row: Row[Any]) -> BatchRecord:
    return BatchRecord(
        id=row.id,
        name=row.name,
        job_path=row.job_path,
        job_hash=row.job_hash,
        settings=dict(row.settings or {}),
        budget=row.budget,
        credits_net=int(row.credits_net),
        credits_reserved=int(row.credits_reserved),
        shared_rate=row.shared_rate,
        shared_concurrency=row.shared_concurrency,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at if row.finished_at else None,
    )


def item_record(row: Row[Any]) -> ItemRecord:
    files = files_from_json(row.files)
    return ItemRecord(
        id=row.id,
        batch_id=row.batch_id,
        key=row.key,
        ordinal=row.ordinal,
        prompt=row.prompt,
        settings=ItemSettings(
            model=row.model,
            resolution=row.resolution,
            aspect_ratio=row.aspect_ratio,
            tool=row.tool,
            image_count=row.image_count,
            name=row.name,
        ),
        project_name=row.project_name,
        estimate=int(row.estimate),
        estimate_exact=bool(row.estimate_exact),
        state=row.state,
        failure=row.failure,
        attempts=row.attempts,
        render_failures=row.render_failures,
        project_id=row.project_id,
        credits_reserved=int(row.credits_reserved),
        error_status=row.error_status,
        error_message=row.error_message,
        files=tuple(f.path for f in files),
        source_path=row.source_path,
        source_line=row.source_line,
        file_details=files,
        vars=vars_from_json(row.vars),
    )


def _insert_new_items(db: Database, conn: Connection, rows: list[dict[str, Any]]) -> int:
    """Insert item rows, skipping keys already in the batch; how many were inserted."""
    return len(conn.execute(_INSERT_ITEM[db.dialect].returning(ITEMS.c.id), rows).all())


def _item_row(
    batch_id: int, item: JobItem, estimate: int, exact: bool, project_name: str, now: datetime
) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "key": item.key,
        "ordinal": item.ordinal,
        "prompt": item.prompt,
        **settings_columns(item.settings),
        "project_name": project_name,
        "source_path": item.path,
        "source_line": item.line,
        "vars": dict(item.vars) or None,
        "estimate": estimate,
        "estimate_exact": exact,
        "state": "pending",
        "attempts": 0,
        "render_failures": 0,
        "credits_reserved": 0,
        "created_at": now,
        "updated_at": now,
    }


def _all_rows(query: Select[Any]) -> Callable[[Connection], Sequence[Row[Any]]]:
    return lambda conn: conn.execute(query).all()


def _recount_reserved(conn: Connection, batch_id: int) -> None:
    conn.execute(
        update(ITEMS)
        .where(ITEMS.c.batch_id == batch_id, ITEMS.c.state == "pending")
        .values(credits_reserved=0)
    )
    total = conn.scalar(
        select(func.coalesce(func.sum(ITEMS.c.credits_reserved), 0)).where(
            ITEMS.c.batch_id == batch_id
        )
    )
    conn.execute(
        update(BATCHES).where(BATCHES.c.id == batch_id).values(credits_reserved=int(total or 0))
    )


def _excerpt(text: str, length: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= length else flat[: length - 1] + "…"
