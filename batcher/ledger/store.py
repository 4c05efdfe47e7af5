"""All SQL of batcher, in one place.

The ledger is the source of truth for every item and every credit. Callers
get value objects (`BatchRecord`, `ItemRecord`, ...), never ORM rows or
sessions. The runner's writes are small typed operations (`BeginSend`,
`Created`, ...) that `Ledger.apply` commits in groups: each operation is
committed before its caller goes on (intent before the call, outcome after
it), but many callers share one transaction, which is what makes a durable
ledger as fast as no ledger.

SQLite (the default) runs in WAL mode with full fsync and takes the write
lock at the start of every transaction (BEGIN IMMEDIATE), so several
processes sharing one file serialise cleanly. PostgreSQL claims work with
SELECT ... FOR UPDATE SKIP LOCKED and locks the batch row for budget checks.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Table,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    false,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.elements import BindParameter

from batcher.errors import ConfigError, LedgerError, LedgerMissingError
from batcher.jobfile.items import ItemSettings, JobItem
from batcher.ledger import migrate
from batcher.ledger.models import Batch, CreditEvent, Item, UTCDateTime, Worker, utcnow

log = logging.getLogger(__name__)

BATCHES = cast(Table, Batch.__table__)
ITEMS = cast(Table, Item.__table__)
CREDITS = cast(Table, CreditEvent.__table__)
WORKERS = cast(Table, Worker.__table__)

STATES = ("pending", "sending", "unconfirmed", "submitted", "complete", "failed")

# Why a failed item failed; decides what `resume` does with it.
FAILURE_REFUSED = "refused"  # the API refused it with a 4xx other than 429: needs --retry-failed
FAILURE_TRANSIENT = "transient"  # 429/5xx/unreachable until retries ran out: resume retries
FAILURE_RENDER = "render"  # the render failed (refunded): resume re-creates it
FAILURE_DOWNLOAD = "download"  # rendered but not saved: resume re-polls and downloads

SQLITE_BUSY_TIMEOUT_S = 30
INSERT_CHUNK = 1000


# --------------------------------------------------------------------------- values


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
    files: tuple[str, ...]
    source_path: str | None
    source_line: int | None


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
class RecoveryCounts:
    unconfirmed: int  # items a dead worker was sending: in doubt now
    released: int  # items a dead worker had claimed: free again
    dead_workers: int


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


# --------------------------------------------------------------------------- operations
#
# Each operation is one state change of one item, committed before its caller
# continues. `Ledger.apply` runs a group of them in one transaction, one
# statement per kind.


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
    """The API accepted the create: the project id is known and the charge recorded."""

    item_id: int
    batch_id: int
    project_id: str
    credits_charged: int
    reserved: int
    keep_claim: bool  # False with --no-wait: nobody follows the render in this run


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
    files: tuple[str, ...] | None = None
    count_render_failure: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseClaims:
    """The worker gives items back untouched (stopping, or budget exhausted)."""

    item_ids: tuple[int, ...]


LedgerOp = BeginSend | Created | SendFailed | RenderFinished | ReleaseClaims


@dataclass
class _Deltas:
    """Per-batch changes to the budget counters accumulated over one group."""

    net: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    reserved: dict[int, int] = field(default_factory=lambda: defaultdict(int))


# --------------------------------------------------------------------------- statements
#
# The runner's writes, built once: SQLAlchemy then reuses their compiled form,
# where a statement built per call would be keyed and looked up (or compiled)
# every time. Each is run with executemany over a whole group of operations.

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
        credits_reserved=0,
        failure=None,
        error_status=None,
        error_code=None,
        error_message=None,
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
_BUDGET_LOCKED = _BUDGET.with_for_update()

_RECORDED = select(CREDITS.c.project_id).where(
    CREDITS.c.kind == bindparam("kind"),
    CREDITS.c.project_id.in_(bindparam("projects", expanding=True)),
)


# --------------------------------------------------------------------------- engine


def create_ledger_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"ledger URL {url!r} is not a database URL") from None
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = create_engine(
                parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
            )
            _configure_sqlite(engine)
            return engine
        return create_engine(parsed, pool_pre_ping=True)
    except NoSuchModuleError:
        raise ConfigError(
            f"no driver for {parsed.get_backend_name()!r}; for PostgreSQL install "
            "'batcher[postgres]' and use a postgresql+psycopg:// URL"
        ) from None
    except ImportError as exc:
        raise ConfigError(f"the database driver cannot be imported: {exc}") from None


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE itself (see below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit survives power loss, not only a killed process. Group
        # commits make the extra fsync cheap.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Take the write lock up front: a read-then-write transaction (a budget
        # check, a claim) can then never be overtaken by another process.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _require_existing_sqlite(url: str) -> None:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return  # create_ledger_engine reports it
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return
    if not Path(database).exists():
        raise LedgerMissingError(
            f"no ledger at {database} (nothing has run with this --db / BATCHER_DATABASE_URL yet)"
        )


def display_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


# --------------------------------------------------------------------------- the ledger


class Ledger:
    """The batcher ledger over one SQLAlchemy engine. Methods are synchronous and
    thread-safe; async callers run them in a worker thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._insert_credit = _insert_ignore(self.dialect, CREDITS)

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True, create: bool = True) -> Ledger:
        """Open the ledger at `url`, applying pending migrations first.

        `create=False` (the reporting commands) refuses a SQLite file that does
        not exist rather than reporting zeros from a new, empty one.
        """
        if not create:
            _require_existing_sqlite(url)
        engine = create_ledger_engine(url)
        ledger = cls(engine)
        if upgrade:
            try:
                migrate.upgrade(engine)
            except SQLAlchemyError as exc:
                engine.dispose()
                raise LedgerError(
                    f"cannot open the ledger {display_url(url)}: {_db_message(exc)}"
                ) from None
        return ledger

    @classmethod
    def open_for_report(cls, url: str) -> tuple[Ledger, bool]:
        """The ledger at `url` for a report; if its SQLite file does not exist, an
        empty in-memory one (reports then show nothing) and False."""
        try:
            return cls.open(url, create=False), True
        except LedgerMissingError:
            return cls.open("sqlite://"), False

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def transaction(self) -> _Transaction:
        """One committed transaction; for the queries of this package only."""
        return _Transaction(self.engine)

    # ------------------------------------------------------------------ batches

    def get_batch(self, name: str) -> BatchRecord | None:
        with self.transaction() as conn:
            row = conn.execute(select(BATCHES).where(BATCHES.c.name == name)).first()
        return _batch(row) if row else None

    def get_batch_by_id(self, batch_id: int) -> BatchRecord:
        with self.transaction() as conn:
            row = conn.execute(select(BATCHES).where(BATCHES.c.id == batch_id)).one()
        return _batch(row)

    def batch_names(self) -> list[str]:
        with self.transaction() as conn:
            return list(conn.scalars(select(BATCHES.c.name).order_by(BATCHES.c.id)))

    def open_batch(
        self,
        name: str,
        *,
        job_path: str | None,
        job_hash: str | None,
        budget: int | None,
        settings: Mapping[str, Any],
    ) -> tuple[BatchRecord, bool]:
        """The batch called `name`, created if new; returns (batch, created)."""
        now = utcnow()
        with self.transaction() as conn:
            row = conn.execute(select(BATCHES).where(BATCHES.c.name == name)).first()
            created = row is None
            if row is None:
                conn.execute(
                    insert(BATCHES).values(
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
        return _batch(fresh), created

    def update_settings(self, batch_id: int, settings: Mapping[str, Any]) -> None:
        with self.transaction() as conn:
            current = conn.scalar(select(BATCHES.c.settings).where(BATCHES.c.id == batch_id))
            conn.execute(
                update(BATCHES)
                .where(BATCHES.c.id == batch_id)
                .values(settings={**(current or {}), **settings})
            )

    def set_budget(self, batch_id: int, budget: int | None) -> None:
        with self.transaction() as conn:
            conn.execute(update(BATCHES).where(BATCHES.c.id == batch_id).values(budget=budget))

    def set_shared_limits(
        self, batch_id: int, *, rate: float | None, concurrency: int | None
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                update(BATCHES)
                .where(BATCHES.c.id == batch_id)
                .values(shared_rate=rate, shared_concurrency=concurrency)
            )

    def mark_finished(self, batch_id: int) -> None:
        now = utcnow()
        with self.transaction() as conn:
            conn.execute(
                update(BATCHES)
                .where(BATCHES.c.id == batch_id)
                .values(finished_at=now, updated_at=now)
            )

    def sync_items(
        self,
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
        now = utcnow()
        with self.transaction() as conn:
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
                    conn.execute(insert(ITEMS), chunk)
                    added += len(chunk)
                    chunk = []
            if chunk:
                conn.execute(insert(ITEMS), chunk)
                added += len(chunk)
            stale = existing - seen
            dropped = 0
            if stale:
                stale_list = sorted(stale)
                for start in range(0, len(stale_list), INSERT_CHUNK):
                    result = conn.execute(
                        delete(ITEMS).where(
                            ITEMS.c.batch_id == batch_id,
                            ITEMS.c.key.in_(stale_list[start : start + INSERT_CHUNK]),
                            ITEMS.c.state == "pending",
                            ITEMS.c.attempts == 0,
                            ITEMS.c.worker_id.is_(None),
                        )
                    )
                    dropped += result.rowcount
            conn.execute(update(BATCHES).where(BATCHES.c.id == batch_id).values(updated_at=now))
        return SyncResult(added=added, kept=len(existing & seen), dropped=dropped)

    # ------------------------------------------------------------------ workers

    def register_worker(self, worker: WorkerRecord) -> None:
        with self.transaction() as conn:
            conn.execute(
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

    def heartbeat(self, worker_id: str, *, lease_until: datetime, in_flight: int) -> None:
        """Prove the worker alive and extend the leases of everything it holds."""
        now = utcnow()
        with self.transaction() as conn:
            conn.execute(
                update(WORKERS)
                .where(WORKERS.c.id == worker_id)
                .values(heartbeat_at=now, in_flight=in_flight)
            )
            conn.execute(
                update(ITEMS)
                .where(
                    ITEMS.c.worker_id == worker_id,
                    ITEMS.c.state.in_(("pending", "sending", "submitted")),
                )
                .values(lease_expires_at=lease_until)
            )

    def live_worker_count(self, batch_id: int, lease_s: float) -> int:
        """Workers of the batch that have not stopped and beat within a lease."""
        since = utcnow() - timedelta(seconds=lease_s)
        with self.transaction() as conn:
            return int(
                conn.scalar(
                    select(func.count()).where(
                        WORKERS.c.batch_id == batch_id,
                        WORKERS.c.stopped_at.is_(None),
                        WORKERS.c.heartbeat_at >= since,
                    )
                )
                or 0
            )

    def stop_worker(self, worker_id: str) -> None:
        """A clean exit: give back every claim that is not mid-send."""
        now = utcnow()
        with self.transaction() as conn:
            conn.execute(
                update(ITEMS)
                .where(ITEMS.c.worker_id == worker_id, ITEMS.c.state != "sending")
                .values(worker_id=None, lease_expires_at=None)
            )
            conn.execute(
                update(WORKERS)
                .where(WORKERS.c.id == worker_id)
                .values(stopped_at=now, heartbeat_at=now, in_flight=0)
            )

    def workers(
        self, batch_id: int | None = None, *, live_only: bool = False
    ) -> list[WorkerRecord]:
        query = select(WORKERS).order_by(WORKERS.c.started_at)
        if batch_id is not None:
            query = query.where(WORKERS.c.batch_id == batch_id)
        if live_only:
            query = query.where(WORKERS.c.stopped_at.is_(None))
        with self.transaction() as conn:
            return [_worker(row) for row in conn.execute(query)]

    def recover(
        self,
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
        now = now or utcnow()
        with self.transaction() as conn:
            candidates = [
                _worker(row)
                for row in conn.execute(
                    select(WORKERS).where(
                        WORKERS.c.batch_id == batch_id, WORKERS.c.stopped_at.is_(None)
                    )
                )
            ]
            dead = [w.id for w in candidates if is_dead(w)]
            if dead:
                conn.execute(
                    update(WORKERS)
                    .where(WORKERS.c.id.in_(dead))
                    .values(stopped_at=now, in_flight=0)
                )
            held_by_dead = ITEMS.c.worker_id.in_(dead) if dead else false()
            expired = and_(
                ITEMS.c.worker_id.is_not(None),
                ITEMS.c.lease_expires_at.is_not(None),
                ITEMS.c.lease_expires_at < now,
            )
            orphaned = or_(held_by_dead, expired)
            unconfirmed = conn.execute(
                update(ITEMS)
                .where(ITEMS.c.batch_id == batch_id, ITEMS.c.state == "sending", orphaned)
                .values(
                    state="unconfirmed",
                    worker_id=None,
                    lease_expires_at=None,
                    error_message="the worker sending it stopped before the answer was recorded",
                    updated_at=now,
                )
            ).rowcount
            released = conn.execute(
                update(ITEMS)
                .where(ITEMS.c.batch_id == batch_id, ITEMS.c.state != "sending", orphaned)
                .values(worker_id=None, lease_expires_at=None)
            ).rowcount
        if unconfirmed or released:
            log.info(
                "recovered",
                extra={"unconfirmed": unconfirmed, "released": released, "dead": len(dead)},
            )
        return RecoveryCounts(unconfirmed=unconfirmed, released=released, dead_workers=len(dead))

    # ------------------------------------------------------------------ preparing a run

    def requeue(
        self,
        batch_id: int,
        *,
        retry_failed: bool,
        resend_unconfirmed: bool,
    ) -> RequeueCounts:
        """Make retryable items eligible again, as `resume` promises.

        Refusals other than 429/5xx are retried only with `retry_failed`;
        unconfirmed items only with `resend_unconfirmed` (they may be paid for).
        """
        now = utcnow()
        retryable = [FAILURE_TRANSIENT, FAILURE_RENDER]
        if retry_failed:
            retryable.append(FAILURE_REFUSED)
        with self.transaction() as conn:
            retried = conn.execute(
                update(ITEMS)
                .where(
                    ITEMS.c.batch_id == batch_id,
                    ITEMS.c.state == "failed",
                    ITEMS.c.failure.in_(retryable),
                )
                .values(state="pending", failure=None, render_failures=0, updated_at=now)
            ).rowcount
            repoll = conn.execute(
                update(ITEMS)
                .where(
                    ITEMS.c.batch_id == batch_id,
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
                    .where(
                        ITEMS.c.batch_id == batch_id,
                        ITEMS.c.state == "unconfirmed",
                        ITEMS.c.worker_id.is_(None),
                    )
                    .values(state="pending", updated_at=now)
                ).rowcount
                # Their reservations were held because they might have been charged;
                # the re-send reserves afresh.
                _recount_reserved(conn, batch_id)
        return RequeueCounts(retried=retried, repoll=repoll, resend=resend)

    def state_counts(self, batch_id: int) -> dict[str, int]:
        with self.transaction() as conn:
            rows = conn.execute(
                select(ITEMS.c.state, func.count())
                .where(ITEMS.c.batch_id == batch_id)
                .group_by(ITEMS.c.state)
            )
            counts = dict.fromkeys(STATES, 0)
            counts.update({state: int(n) for state, n in rows})
        return counts

    # ------------------------------------------------------------------ claiming

    def claim(
        self,
        batch_id: int,
        worker_id: str,
        *,
        states: Sequence[str],
        limit: int,
        lease_until: datetime,
    ) -> list[ItemRecord]:
        """Take up to `limit` unclaimed items in `states`, in job order."""
        now = utcnow()
        free = or_(
            ITEMS.c.worker_id.is_(None),
            ITEMS.c.lease_expires_at.is_(None),
            ITEMS.c.lease_expires_at < now,
        )
        candidates = (
            select(ITEMS.c.id)
            .where(ITEMS.c.batch_id == batch_id, ITEMS.c.state.in_(states), free)
            .order_by(ITEMS.c.state, ITEMS.c.ordinal)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            candidates = candidates.with_for_update(skip_locked=True)
        with self.transaction() as conn:
            rows = conn.execute(
                update(ITEMS)
                .where(ITEMS.c.id.in_(candidates.scalar_subquery()))
                .values(worker_id=worker_id, lease_expires_at=lease_until)
                .returning(*ITEMS.c)
            ).all()
        records = [_item(row) for row in rows]
        records.sort(key=lambda r: r.ordinal)
        return records

    def items(
        self, batch_id: int, *, states: Sequence[str] | None = None, page: int = 1000
    ) -> Iterator[ItemRecord]:
        """Every item of a batch (optionally in some states), page by page."""
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
            with self.transaction() as conn:
                rows = conn.execute(query).all()
            if not rows:
                return
            for row in rows:
                yield _item(row)
            last_id = rows[-1].id

    def project_charges(self, project_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(charged, refunded) per project id."""
        found: dict[str, list[int]] = {}
        with self.transaction() as conn:
            for start in range(0, len(project_ids), INSERT_CHUNK):
                chunk = list(project_ids[start : start + INSERT_CHUNK])
                for project_id, kind, credits in conn.execute(
                    select(CREDITS.c.project_id, CREDITS.c.kind, CREDITS.c.credits).where(
                        CREDITS.c.project_id.in_(chunk)
                    )
                ):
                    entry = found.setdefault(project_id, [0, 0])
                    entry[0 if kind == "charge" else 1] += int(credits)
        return {pid: (charged, refunded) for pid, (charged, refunded) in found.items()}

    def pending_demand(self, batch_id: int, *, samples: int = 10) -> list[Demand]:
        """What the pending items of a batch ask for, grouped for preflight checks."""
        group = (ITEMS.c.model, ITEMS.c.resolution, ITEMS.c.image_count)
        pending = and_(ITEMS.c.batch_id == batch_id, ITEMS.c.state == "pending")
        with self.transaction() as conn:
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
                        ITEMS.c.model == model,
                        ITEMS.c.resolution.is_(None)
                        if resolution is None
                        else ITEMS.c.resolution == resolution,
                        ITEMS.c.image_count == image_count,
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

    def stale_leases(self, batch_ids: Sequence[int]) -> dict[int, int]:
        """Per batch, open items still marked as held by a worker whose lease expired."""
        if not batch_ids:
            return {}
        now = utcnow()
        with self.transaction() as conn:
            rows = conn.execute(
                select(ITEMS.c.batch_id, func.count())
                .where(
                    ITEMS.c.batch_id.in_(list(batch_ids)),
                    ITEMS.c.worker_id.is_not(None),
                    ITEMS.c.lease_expires_at < now,
                    ITEMS.c.state.in_(("pending", "sending", "submitted")),
                )
                .group_by(ITEMS.c.batch_id)
            )
            return {int(batch_id): int(count) for batch_id, count in rows}

    def held_elsewhere(self, batch_id: int, worker_id: str) -> int:
        """Open items other workers hold under a live lease (they may come back)."""
        now = utcnow()
        with self.transaction() as conn:
            return int(
                conn.scalar(
                    select(func.count()).where(
                        ITEMS.c.batch_id == batch_id,
                        ITEMS.c.state.in_(("pending", "sending", "submitted")),
                        ITEMS.c.worker_id.is_not(None),
                        ITEMS.c.worker_id != worker_id,
                        ITEMS.c.lease_expires_at >= now,
                    )
                )
                or 0
            )

    def observed_charges(self, batch_id: int) -> dict[tuple[str, str | None, int], int]:
        """The highest charge seen per (model, resolution, image_count) in this batch."""
        query = (
            select(
                ITEMS.c.model, ITEMS.c.resolution, ITEMS.c.image_count, func.max(CREDITS.c.credits)
            )
            .select_from(CREDITS.join(ITEMS, ITEMS.c.id == CREDITS.c.item_id))
            .where(CREDITS.c.batch_id == batch_id, CREDITS.c.kind == "charge")
            .group_by(ITEMS.c.model, ITEMS.c.resolution, ITEMS.c.image_count)
        )
        with self.transaction() as conn:
            return {(m, r, int(n)): int(c) for m, r, n, c in conn.execute(query)}

    # ------------------------------------------------------------------ the runner's writes

    def apply(self, ops: Sequence[LedgerOp]) -> list[bool | None]:
        """Commit a group of operations in one transaction.

        Returns, per operation, True/False for `BeginSend` (accepted or refused
        for budget) and None for the others. Should the group fail as a whole,
        each operation is retried alone so that one bad row cannot sink the rest.
        """
        try:
            with self.transaction() as conn:
                return self._apply(conn, ops)
        except LedgerError:
            if len(ops) == 1:
                raise
            log.warning("group commit failed; applying operations one by one", exc_info=True)
            results: list[bool | None] = []
            for op in ops:
                with self.transaction() as conn:
                    results.extend(self._apply(conn, [op]))
            return results

    def _apply(self, conn: Connection, ops: Sequence[LedgerOp]) -> list[bool | None]:
        now = utcnow()
        deltas = _Deltas()
        results: dict[int, bool | None] = {}
        by_kind: dict[type, list[tuple[int, Any]]] = defaultdict(list)
        for index, op in enumerate(ops):
            by_kind[type(op)].append((index, op))
            results[index] = None
        # Settlements first, so budget they free is available to this group's reservations.
        self._apply_created(conn, [op for _, op in by_kind[Created]], deltas, now)
        self._apply_send_failed(conn, [op for _, op in by_kind[SendFailed]], deltas, now)
        self._apply_render_finished(conn, [op for _, op in by_kind[RenderFinished]], deltas, now)
        self._apply_release(conn, [op for _, op in by_kind[ReleaseClaims]])
        accepted = self._apply_begin_send(conn, [op for _, op in by_kind[BeginSend]], deltas, now)
        for (index, _), ok in zip(by_kind[BeginSend], accepted, strict=True):
            results[index] = ok
        self._apply_deltas(conn, deltas, now)
        return [results[i] for i in range(len(ops))]

    def _apply_begin_send(
        self, conn: Connection, ops: list[BeginSend], deltas: _Deltas, now: datetime
    ) -> list[bool | None]:
        """True: send may proceed. False: no room in the budget. None: the item is
        no longer this worker's (its lease lapsed and another worker took it)."""
        if not ops:
            return []
        accepted: list[bool | None] = [True] * len(ops)
        for batch_id in {op.batch_id for op in ops if op.budgeted}:
            # Every worker's reservation reads and moves the same counters: on
            # PostgreSQL lock the row; SQLite's write lock is already held.
            query = _BUDGET_LOCKED if self.dialect == "postgresql" else _BUDGET
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
            sent = set(
                conn.scalars(_SENT_NOW, {"item_ids": [op.item_id for op in chosen], "now": now})
            )
        for index, op in enumerate(ops):
            if not accepted[index]:
                continue
            if op.item_id in sent:
                deltas.reserved[op.batch_id] += op.reserve
            else:
                accepted[index] = None
        return accepted

    def _apply_created(
        self, conn: Connection, ops: list[Created], deltas: _Deltas, now: datetime
    ) -> None:
        if not ops:
            return
        kept = [
            {"item_id": op.item_id, "project_id": op.project_id, "now": now}
            for op in ops
            if op.keep_claim
        ]
        released = [
            {"item_id": op.item_id, "project_id": op.project_id, "now": now}
            for op in ops
            if not op.keep_claim
        ]
        if kept:
            conn.execute(_CREATED, kept)
        if released:
            conn.execute(_CREATED_RELEASED, released)
        # A project id is new by construction: the API just made it. The
        # unique constraint still guards against recording it twice.
        conn.execute(
            self._insert_credit,
            [
                {
                    "batch_id": op.batch_id,
                    "item_id": op.item_id,
                    "kind": "charge",
                    "credits": op.credits_charged,
                    "project_id": op.project_id,
                    "created_at": now,
                }
                for op in ops
            ],
        )
        for op in ops:
            deltas.net[op.batch_id] += op.credits_charged
            deltas.reserved[op.batch_id] -= op.reserved

    def _apply_send_failed(
        self, conn: Connection, ops: list[SendFailed], deltas: _Deltas, now: datetime
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
                    "message": op.message,
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
        self, conn: Connection, ops: list[RenderFinished], deltas: _Deltas, now: datetime
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
                    "code": op.code,
                    "message": op.message,
                    "files": list(op.files) if op.files is not None else None,
                    "render_failure": 1 if op.count_render_failure else 0,
                    "finished_at": now if op.state in ("complete", "failed") else None,
                    "now": now,
                }
                for op in ops
            ],
        )
        refunds = [op for op in ops if op.refund > 0]
        recorded = self._insert_credits(
            conn,
            [
                {
                    "batch_id": op.batch_id,
                    "item_id": op.item_id,
                    "kind": "refund",
                    "credits": op.refund,
                    "project_id": op.project_id,
                    "created_at": now,
                }
                for op in refunds
            ],
        )
        for op in refunds:
            if op.project_id in recorded:
                deltas.net[op.batch_id] -= op.refund

    def _apply_release(self, conn: Connection, ops: list[ReleaseClaims]) -> None:
        ids = [item_id for op in ops for item_id in op.item_ids]
        if ids:
            conn.execute(
                update(ITEMS)
                .where(ITEMS.c.id.in_(ids), ITEMS.c.state != "sending")
                .values(worker_id=None, lease_expires_at=None)
            )

    def _insert_credits(self, conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
        """Insert credit rows, skipping any already recorded; returns the project ids inserted."""
        if not rows:
            return set()
        already = set(
            conn.scalars(
                _RECORDED,
                {"kind": rows[0]["kind"], "projects": [r["project_id"] for r in rows]},
            )
        )
        fresh = [r for r in rows if r["project_id"] not in already]
        if fresh:
            conn.execute(self._insert_credit, fresh)
        return {r["project_id"] for r in fresh}

    def _apply_deltas(self, conn: Connection, deltas: _Deltas, now: datetime) -> None:
        changes = [
            {"batch": batch_id, "net": deltas.net[batch_id], "reserved": deltas.reserved[batch_id]}
            for batch_id in set(deltas.net) | set(deltas.reserved)
        ]
        changes = [c for c in changes if c["net"] or c["reserved"]]
        for change in changes:
            conn.execute(_BATCH_COUNTERS, {**change, "now": now})

    # ------------------------------------------------------------------ reconcile

    def record_refund(self, batch_id: int, item_id: int, project_id: str, credits: int) -> bool:
        """A refund found after the fact (reconcile). False if it was already recorded."""
        if credits <= 0:
            return False
        now = utcnow()
        with self.transaction() as conn:
            deltas = _Deltas()
            recorded = self._insert_credits(
                conn,
                [
                    {
                        "batch_id": batch_id,
                        "item_id": item_id,
                        "kind": "refund",
                        "credits": credits,
                        "project_id": project_id,
                        "created_at": now,
                    }
                ],
            )
            if recorded:
                deltas.net[batch_id] -= credits
                self._apply_deltas(conn, deltas, now)
        return bool(recorded)

    # ------------------------------------------------------------------ reports

    def batch_summaries(self, name: str | None = None) -> list[BatchSummary]:
        batches_query = select(BATCHES).order_by(BATCHES.c.id)
        if name is not None:
            batches_query = batches_query.where(BATCHES.c.name == name)
        with self.transaction() as conn:
            batches = conn.execute(batches_query).all()
            ids = [b.id for b in batches]
            if not ids:
                return []
            states: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATES, 0))
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


# --------------------------------------------------------------------------- helpers


def _insert_ignore(dialect: str, table: Any) -> Any:
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return insert(table)


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


def _item_row(
    batch_id: int, item: JobItem, estimate: int, exact: bool, project_name: str, now: datetime
) -> dict[str, Any]:
    s = item.settings
    return {
        "batch_id": batch_id,
        "key": item.key,
        "ordinal": item.ordinal,
        "prompt": item.prompt,
        "model": s.model,
        "resolution": s.resolution,
        "aspect_ratio": s.aspect_ratio,
        "tool": s.tool,
        "image_count": s.image_count,
        "name": s.name,
        "project_name": project_name,
        "source_path": item.path,
        "source_line": item.line,
        "estimate": estimate,
        "estimate_exact": exact,
        "state": "pending",
        "attempts": 0,
        "render_failures": 0,
        "credits_reserved": 0,
        "created_at": now,
        "updated_at": now,
    }


def _excerpt(text: str, length: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= length else flat[: length - 1] + "…"


def _batch(row: Row[Any]) -> BatchRecord:
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


def _item(row: Row[Any]) -> ItemRecord:
    files = row.files
    if isinstance(files, str):
        files = json.loads(files)
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
        files=tuple(files or ()),
        source_path=row.source_path,
        source_line=row.source_line,
    )


def _worker(row: Row[Any]) -> WorkerRecord:
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


def _db_message(exc: SQLAlchemyError) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig).strip().splitlines()[0]
    return str(exc).strip().splitlines()[0]


class _Transaction:
    """`with ledger.transaction() as conn:` one committed transaction; database errors
    become LedgerError."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._context: Any = None

    def __enter__(self) -> Connection:
        try:
            self._context = self._engine.begin()
            conn: Connection = self._context.__enter__()
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot open the ledger: {_db_message(exc)}") from exc
        return conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        try:
            self._context.__exit__(exc_type, exc, tb)
        except SQLAlchemyError as commit_error:
            raise LedgerError(f"ledger write failed: {_db_message(commit_error)}") from commit_error
        if isinstance(exc, SQLAlchemyError):
            raise LedgerError(f"ledger error: {_db_message(exc)}") from exc
        return False
