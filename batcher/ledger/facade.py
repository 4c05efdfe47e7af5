"""`Ledger`: the one way into the ledger. Each method delegates to the module of
its concern; callers get value objects, never rows, sessions or connections.

    engine.py        opening: URL checks, the engine, SQLite pragmas, migrations
    transactions.py  read and write transactions; database errors -> LedgerError
    batches.py       batches and their items
    claims.py        workers, claims, leases, recovery
    writes.py        the runner's group-committed operations
    credits.py       credit rows, and the audit and reconcile queries

Methods are synchronous and thread-safe; async callers run them in a worker
thread (`writer.LedgerWriter` does so for the runner's writes). Every
timestamp the ledger writes comes from its clock (`clock=`, default `utcnow`),
so tests pin time without patching anything.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from batcher.errors import ConfigError, LedgerMissingError
from batcher.jobfile.items import ItemSettings, JobItem
from batcher.ledger import (
    batches,
    claims,
    engine,
    kinds,
    rebuild,
    rescue,
    reviews,
    webhooks,
    writes,
)
from batcher.ledger import credits as credit_rows  # `credits` is a parameter name below
from batcher.ledger.kinds import Kind, KindItems, SeenPrice
from batcher.ledger.models import utcnow
from batcher.ledger.rebuild import RebuildCounts, RebuiltItem
from batcher.ledger.rescue import RescueApplied
from batcher.ledger.reviews import ItemCredits, ReviewCounts, ReviewedImage, ReviewRecord
from batcher.ledger.transactions import Clock, Database, Target
from batcher.ledger.values import (
    BatchRecord,
    BatchSummary,
    ChargeSeen,
    CreditSnapshot,
    CreditWindow,
    Demand,
    DoubtfulItem,
    ItemRecord,
    KnownProject,
    LedgerOp,
    RecoveryCounts,
    RequeueCounts,
    SyncResult,
    WorkerRecord,
)
from batcher.ledger.webhooks import StoredEvent, WebhookCounts


class Ledger:
    """The batcher ledger over one database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    def open(
        cls,
        url: str,
        *,
        upgrade: bool = True,
        create: bool = True,
        clock: Clock = utcnow,
        busy_timeout_s: float | None = None,
        rescue_wait: bool = True,
    ) -> Ledger:
        """Open the ledger at `url`, applying pending migrations first.

        `create=False` (the reporting commands) refuses a SQLite file that does
        not exist rather than reporting zeros from a new, empty one. Every problem
        with the URL or the database is a one-line BatcherError (see engine.py).
        `busy_timeout_s`: how long a write waits for another process's lock
        (default: the URL's `?timeout=`, else 30 s). A rescue file a lost run left
        (rescue.py) is applied first; `rescue_wait=False` (reports) leaves it for
        later rather than wait for another process's write lock.
        """
        db = engine.connect(url, create=create, clock=clock, busy_timeout_s=busy_timeout_s)
        try:
            if upgrade:
                engine.bring_to_head(db)
                # Answers a run could not record (batcher.ledger.rescue), before anything else.
                rescue.apply_rescue(db, wait=rescue_wait)
        except BaseException:
            db.dispose()
            raise
        return cls(db)

    @classmethod
    def open_for_report(cls, url: str, *, clock: Clock = utcnow) -> tuple[Ledger, bool]:
        """The ledger at `url` for a report; if its SQLite file does not exist, an
        empty in-memory one (reports then show nothing) and False."""
        try:
            return cls.open(url, create=False, clock=clock, rescue_wait=False), True
        except LedgerMissingError:
            db = engine.connect_memory(clock)
            engine.bring_to_head(db)
            return cls(db), False

    @property
    def target(self) -> Target:
        """Where the ledger lives (for messages, the rescue file and the file watch)."""
        return self._db.target

    def rebuild_batch(
        self, name: str, items: Sequence[RebuiltItem], *, settings: Mapping[str, Any]
    ) -> RebuildCounts:
        """Create a lost batch again from its manifest's items (see rebuild.py)."""
        return rebuild.rebuild_batch(self._db, name, items, settings=settings)

    def apply_rescue(self) -> list[RescueApplied]:
        """Apply this ledger's rescue files again (after `recover` rebuilt a batch)."""
        return rescue.apply_rescue(self._db)

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self._db.dialect

    def close(self) -> None:
        self._db.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ batches

    def get_batch(self, name: str) -> BatchRecord | None:
        return batches.get_batch(self._db, name)

    def batch_named(self, name: str) -> BatchRecord:
        """The batch called `name`; ConfigError (naming the known ones) when there is none."""
        batch = self.get_batch(name)
        if batch is None:
            known = self.batch_names()
            hint = (
                f"; known batches: {', '.join(known[-10:])}" if known else "; the ledger is empty"
            )
            raise ConfigError(f"no batch named {name!r} in the ledger{hint}")
        return batch

    def get_batch_by_id(self, batch_id: int) -> BatchRecord:
        return batches.get_batch_by_id(self._db, batch_id)

    def batch_names(self) -> list[str]:
        return batches.batch_names(self._db)

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
        return batches.open_batch(
            self._db, name, job_path=job_path, job_hash=job_hash, budget=budget, settings=settings
        )

    def update_settings(self, batch_id: int, settings: Mapping[str, Any]) -> None:
        batches.update_settings(self._db, batch_id, settings)

    def set_budget(self, batch_id: int, budget: int | None) -> None:
        batches.set_batch(self._db, batch_id, budget=budget)

    def set_shared_limits(
        self, batch_id: int, *, rate: float | None, concurrency: int | None
    ) -> None:
        batches.set_batch(self._db, batch_id, shared_rate=rate, shared_concurrency=concurrency)

    def mark_finished(self, batch_id: int) -> None:
        batches.mark_finished(self._db, batch_id)

    def sync_items(
        self,
        batch_id: int,
        items: Iterable[JobItem],
        *,
        estimate: Callable[[ItemSettings], tuple[int, bool]],
        project_name: Callable[[JobItem], str],
    ) -> SyncResult:
        """Add the job's items the batch lacks; drop never-sent ones the job no longer has."""
        return batches.sync_items(
            self._db, batch_id, items, estimate=estimate, project_name=project_name
        )

    def add_items(
        self,
        batch_id: int,
        items: Sequence[JobItem],
        *,
        estimate: Callable[[ItemSettings], tuple[int, bool]],
        project_name: Callable[[JobItem], str],
        redo_of: Mapping[str, int],
    ) -> SyncResult:
        """Add items (reruns), each with the id of the item it redoes, leaving the
        batch's other items alone."""
        return batches.add_items(
            self._db, batch_id, items, estimate=estimate, project_name=project_name, redo_of=redo_of
        )

    def drop_unsent(self, batch_id: int, keys: Sequence[str]) -> int:
        """Delete the never-sent, unheld items among `keys`; how many went."""
        return batches.drop_unsent(self._db, batch_id, keys)

    def requeue(
        self, batch_id: int, *, retry_failed: bool, resend_unconfirmed: bool
    ) -> RequeueCounts:
        """Make retryable items eligible again, as `resume` promises."""
        return batches.requeue(
            self._db, batch_id, retry_failed=retry_failed, resend_unconfirmed=resend_unconfirmed
        )

    def state_counts(self, batch_id: int) -> dict[str, int]:
        return batches.state_counts(self._db, batch_id)

    def items(
        self, batch_id: int, *, states: Sequence[str] | None = None, page: int = 1000
    ) -> Iterator[ItemRecord]:
        """Every item of a batch (optionally in some states), page by page."""
        return batches.items(self._db, batch_id, states=states, page=page)

    def pending_demand(self, batch_id: int, *, samples: int = 10) -> list[Demand]:
        """What the pending items ask for, per model, resolution and image count."""
        return batches.pending_demand(self._db, batch_id, samples=samples)

    def batch_summaries(self, name: str | None = None) -> list[BatchSummary]:
        """Counts per state and credit sums, per batch (all, or the one called `name`)."""
        return batches.batch_summaries(self._db, name)

    # ------------------------------------------------------------------ workers and claims

    def register_worker(self, worker: WorkerRecord) -> None:
        claims.register_worker(self._db, worker)

    def heartbeat(self, worker_id: str, *, lease_until: datetime, in_flight: int) -> None:
        """Prove the worker alive and extend the leases of everything it holds."""
        claims.heartbeat(self._db, worker_id, lease_until=lease_until, in_flight=in_flight)

    def live_worker_count(self, batch_id: int, lease_s: float) -> int:
        return claims.live_worker_count(self._db, batch_id, lease_s)

    def stop_worker(self, worker_id: str) -> None:
        """A clean exit: give back every claim that is not mid-send."""
        claims.stop_worker(self._db, worker_id)

    def workers(
        self, batch_id: int | None = None, *, live_only: bool = False
    ) -> list[WorkerRecord]:
        return claims.workers(self._db, batch_id, live_only=live_only)

    def recover(
        self,
        batch_id: int,
        *,
        is_dead: Callable[[WorkerRecord], bool],
        now: datetime | None = None,
    ) -> RecoveryCounts:
        """Settle what dead workers left: their sends in doubt, their other claims freed."""
        return claims.recover(self._db, batch_id, is_dead=is_dead, now=now)

    def claim(
        self,
        batch_id: int,
        worker_id: str,
        *,
        states: Sequence[str],
        limit: int,
        lease_until: datetime,
        only: Collection[int] | None = None,
    ) -> list[ItemRecord]:
        """Take up to `limit` unclaimed items in `states`, in job order (among `only`)."""
        return claims.claim(
            self._db,
            batch_id,
            worker_id,
            states=states,
            limit=limit,
            lease_until=lease_until,
            only=only,
        )

    def stale_leases(self, batch_ids: Sequence[int]) -> dict[int, int]:
        return claims.stale_leases(self._db, batch_ids)

    def held_elsewhere(self, batch_id: int, worker_id: str) -> int:
        return claims.held_elsewhere(self._db, batch_id, worker_id)

    # ------------------------------------------------------------------ the runner's writes

    def apply(
        self, ops: Sequence[LedgerOp], *, at: datetime | None = None, again: bool = False
    ) -> list[bool | int | None]:
        """Commit a group of operations in one transaction (see writes.py; `at` and
        `again`: a group tried again after a failure is never applied twice)."""
        return writes.apply(self._db, ops, at=at, again=again)

    def now(self) -> datetime:
        """The ledger's clock."""
        return self._db.clock()

    # ------------------------------------------------------------------ credits

    def record_refund(self, batch_id: int, item_id: int, project_id: str, credits: int) -> bool:
        """A refund found after the fact (reconcile). False if it was already recorded."""
        return credit_rows.record_refund(self._db, batch_id, item_id, project_id, credits)

    def record_charge_seen(self, op: ChargeSeen) -> int:
        """What the API says a project cost now (reconcile): the difference from the
        ledger's net recorded as one charge or refund row; the credits recorded."""
        return credit_rows.record_charge_seen(self._db, op)

    def project_charges(self, project_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(charged, refunded) per project id."""
        return credit_rows.project_charges(self._db, project_ids)

    def observed_charges(self, batch_id: int) -> dict[tuple[str, str | None, int], int]:
        """The highest charge seen per (model, resolution, image_count) in this batch."""
        return credit_rows.observed_charges(self._db, batch_id)

    def learned_prices(self) -> dict[Kind, SeenPrice]:
        """The latest charge per (model, resolution, image_count), over every batch."""
        return kinds.learned_prices(self._db)

    def batch_kinds(self, batch_id: int, *, per_kind: int) -> list[KindItems]:
        """The batch's kinds in job order, with their first pending items and counts."""
        return kinds.batch_kinds(self._db, batch_id, per_kind=per_kind)

    def items_by_id(self, ids: Sequence[int]) -> list[ItemRecord]:
        """The items of `ids`, in job order."""
        return kinds.items_by_id(self._db, ids)

    def var_names(self, batch_id: int) -> tuple[str, ...]:
        """The variable and matrix names the batch's items carry, in order of first use."""
        return kinds.var_names(self._db, batch_id)

    def credit_snapshot(
        self, window: CreditWindow, groupings: Sequence[Sequence[str]]
    ) -> CreditSnapshot:
        """Several groupings of the credit rows in `window`, read in one snapshot."""
        return credit_rows.credit_snapshot(self._db, window, groupings)

    def known_projects(self, batch_id: int) -> list[KnownProject]:
        """Every project with a charge row in the batch, with its refund if recorded."""
        return credit_rows.known_projects(self._db, batch_id)

    def doubtful_items(self, batch_ids: Sequence[int]) -> list[DoubtfulItem]:
        """Every unconfirmed item of these batches, in batch and job order."""
        return credit_rows.doubtful_items(self._db, batch_ids)

    # ------------------------------------------------------------------ reviews

    def record_review(
        self,
        batch_id: int,
        item_key: str,
        image: int,
        verdict: str,
        note: str | None = None,
    ) -> ReviewRecord | None:
        """Store one decision, committed before this returns (see reviews.py)."""
        return reviews.record_review(self._db, batch_id, item_key, image, verdict, note)

    def latest_reviews(self, batch_id: int) -> dict[tuple[str, int], ReviewRecord]:
        """The decisions in force in a batch, by (item key, image index)."""
        return reviews.latest_reviews(self._db, batch_id)

    def review_counts(self, batch_id: int) -> ReviewCounts:
        """Images picked and rejected (decisions in force)."""
        return reviews.review_counts(self._db, batch_id)

    def reviewed_images(self, batch_id: int, *, verdict: str | None = None) -> list[ReviewedImage]:
        """The decisions in force with their items, in job order."""
        return reviews.reviewed_images(self._db, batch_id, verdict=verdict)

    def item_credits(self, batch_id: int) -> dict[str, ItemCredits]:
        """Credits charged and refunded per item key."""
        return reviews.item_credits(self._db, batch_id)

    def redo_links(self, batch_id: int) -> dict[str, str]:
        """Reruns in a batch: the new item's key -> the key of the item it redoes."""
        return reviews.redo_links(self._db, batch_id)

    def set_redo_of(self, links: Mapping[int, int]) -> None:
        """Record that each item (id) redoes another (id)."""
        reviews.set_redo_of(self._db, links)

    # ------------------------------------------------------------------ webhooks

    def record_webhook_event(
        self,
        event_type: str,
        project_id: str,
        payload: Mapping[str, Any],
        *,
        batch_id: int | None,
        worker_id: str | None,
    ) -> bool:
        """Store a verified event; False when it was stored already (a duplicate)."""
        return webhooks.record_event(
            self._db, event_type, project_id, payload, batch_id=batch_id, worker_id=worker_id
        )

    def record_webhook_rejected(self, *, batch_id: int, worker_id: str, count: int = 1) -> None:
        webhooks.record_rejected(self._db, batch_id=batch_id, worker_id=worker_id, count=count)

    def webhook_events_after(self, after_id: int) -> list[StoredEvent]:
        return webhooks.events_after(self._db, after_id)

    def last_webhook_event_id(self) -> int:
        return webhooks.last_event_id(self._db)

    def webhook_counts(self, batch_id: int) -> WebhookCounts:
        """Events received for the batch's projects, and deliveries refused."""
        return webhooks.counts(self._db, batch_id)
