"""Reports over the ledger: plain values built from its rows, and their JSON shapes.

Credits in every report are sums of the append-only credit rows, never of
cached counters.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from batcher.errors import ConfigError
from batcher.ledger import STATES, Ledger, ReviewCounts, WebhookCounts, utcnow
from batcher.settings import LEASE_S

NO_REVIEWS: Final = ReviewCounts(picked=0, rejected=0)
NO_WEBHOOKS: Final = WebhookCounts(events=0, deliveries=0, rejected=0)


@dataclass(frozen=True, slots=True)
class BatchStatus:
    id: int
    name: str
    items: int
    states: dict[str, int]
    credits_charged: int
    credits_refunded: int
    budget: int | None
    stale_leases: int
    reviews: ReviewCounts = NO_REVIEWS  # images picked and rejected (decisions in force)
    # The template variables and matrix settings its items carry, in order of first use.
    var_names: tuple[str, ...] = ()
    # Webhook events received for the batch's projects, and deliveries refused.
    webhooks: WebhookCounts = NO_WEBHOOKS

    @property
    def credits_net(self) -> int:
        return self.credits_charged - self.credits_refunded


@dataclass(frozen=True, slots=True)
class WorkerView:
    batch: str
    id: str
    host: str
    pid: int
    in_flight: int
    heartbeat_age: float  # seconds since the last heartbeat
    stale: bool  # silent for longer than a lease: probably dead


@dataclass(frozen=True, slots=True)
class StatusReport:
    """Every batch asked for (iterate over the report to get them) and their live workers."""

    batches: tuple[BatchStatus, ...]
    workers: tuple[WorkerView, ...]
    ledger_found: bool = True  # False: no ledger file at that URL yet, so nothing to show

    def __iter__(self) -> Iterator[BatchStatus]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def status_report(
    ledger: Ledger,
    batch_name: str | None = None,
    *,
    now: datetime | None = None,
    ledger_found: bool = True,
) -> StatusReport:
    summaries = ledger.batch_summaries(batch_name)
    if batch_name is not None and not summaries:
        raise ConfigError(f"no batch named {batch_name!r} in the ledger")
    stale = ledger.stale_leases([s.id for s in summaries])
    names = {s.id: s.name for s in summaries}
    now = now or utcnow()
    workers = tuple(
        WorkerView(
            batch=names[w.batch_id],
            id=w.id,
            host=w.host,
            pid=w.pid,
            in_flight=w.in_flight,
            heartbeat_age=(now - w.heartbeat_at).total_seconds(),
            stale=(now - w.heartbeat_at).total_seconds() > LEASE_S,
        )
        for w in ledger.workers(live_only=True)
        if w.batch_id in names
    )
    return StatusReport(
        batches=tuple(
            BatchStatus(
                id=s.id,
                name=s.name,
                items=s.items,
                states={state: s.states.get(state, 0) for state in STATES},
                credits_charged=s.credits_charged,
                credits_refunded=s.credits_refunded,
                budget=s.budget,
                stale_leases=stale.get(s.id, 0),
                reviews=ledger.review_counts(s.id),
                var_names=ledger.var_names(s.id),
                webhooks=ledger.webhook_counts(s.id),
            )
            for s in summaries
        ),
        workers=workers,
        ledger_found=ledger_found,
    )


def status_json(report: StatusReport) -> dict[str, Any]:
    """`status --json`: the shape DESIGN.md documents, plus budget, workers, the
    review decisions in force (`reviews: {picked, rejected}`, images), the names
    of the template variables its items carry (`vars`) and the webhook events
    (`webhooks: {events, deliveries, rejected}`)."""
    return {
        "batches": [
            {
                "name": b.name,
                "id": b.id,
                "items": b.items,
                "states": b.states,
                "credits_charged": b.credits_charged,
                "credits_refunded": b.credits_refunded,
                "credits_net": b.credits_net,
                "budget": b.budget,
                "stale_leases": b.stale_leases,
                "reviews": {"picked": b.reviews.picked, "rejected": b.reviews.rejected},
                "vars": list(b.var_names),
                "webhooks": {
                    "events": b.webhooks.events,
                    "deliveries": b.webhooks.deliveries,
                    "rejected": b.webhooks.rejected,
                },
                "workers": [
                    {
                        "id": w.id,
                        "host": w.host,
                        "pid": w.pid,
                        "in_flight": w.in_flight,
                        "heartbeat_age_s": round(w.heartbeat_age, 1),
                        "stale": w.stale,
                    }
                    for w in report.workers
                    if w.batch == b.name
                ],
            }
            for b in report.batches
        ]
    }
