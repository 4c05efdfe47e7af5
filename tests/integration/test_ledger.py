"""The ledger's rules, on a real SQLite file and on the real PostgreSQL server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta

import pytest

from batcher.jobfile.items import ItemSettings, JobItem
from batcher.ledger import (
    FAILURE_DOWNLOAD,
    FAILURE_REFUSED,
    FAILURE_RENDER,
    FAILURE_TRANSIENT,
    BeginSend,
    Created,
    Ledger,
    ReleaseClaims,
    RenderFinished,
    SendFailed,
    WorkerRecord,
    utcnow,
)
from batcher.run.liveness import is_dead, new_worker

SETTINGS = ItemSettings("z-image-turbo", None, "1:1", "general", 1)


def _items(count: int, prefix: str = "k") -> list[JobItem]:
    return [
        JobItem(i, f"{prefix}{i:04d}", f"prompt {i}", SETTINGS, "job.yaml", i + 1)
        for i in range(count)
    ]


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """On SQLite and on PostgreSQL: the same rules must hold on both."""
    with Ledger.open(ledger_url) as opened:
        yield opened


def _batch(ledger: Ledger, count: int = 10, budget: int | None = None) -> int:
    batch, created = ledger.open_batch(
        "b", job_path="job.yaml", job_hash="h", budget=budget, settings={}
    )
    assert created
    ledger.sync_items(
        batch.id, _items(count), estimate=lambda s: (5, True), project_name=lambda i: i.key
    )
    return batch.id


def _claim(ledger: Ledger, batch_id: int, worker: str, limit: int = 100) -> list[int]:
    lease = utcnow() + timedelta(seconds=60)
    items = ledger.claim(batch_id, worker, states=["pending"], limit=limit, lease_until=lease)
    return [i.id for i in items]


def test_sync_adds_new_keeps_known_and_drops_unsent_stale(ledger: Ledger) -> None:
    batch_id = _batch(ledger, 5)
    again = ledger.sync_items(
        batch_id,
        [*_items(4), *_items(2, prefix="new")],
        estimate=lambda s: (5, True),
        project_name=lambda i: i.key,
    )
    assert (again.added, again.kept, again.dropped) == (2, 4, 1)
    assert ledger.state_counts(batch_id)["pending"] == 6


def test_claims_do_not_overlap_and_come_in_job_order(ledger: Ledger) -> None:
    batch_id = _batch(ledger, 10)
    first = _claim(ledger, batch_id, "w1", 4)
    second = _claim(ledger, batch_id, "w2", 100)
    assert len(first) == 4 and len(second) == 6
    assert not set(first) & set(second)
    assert first == sorted(first)


def test_budget_reservations_never_pass_the_cap(ledger: Ledger) -> None:
    batch_id = _batch(ledger, 10, budget=22)
    ids = _claim(ledger, batch_id, "w")
    results = ledger.apply([BeginSend(i, batch_id, "w", 5) for i in ids])
    assert results.count(True) == 4  # 4 x 5 = 20 <= 22 < 25
    batch = ledger.get_batch_by_id(batch_id)
    assert batch.credits_reserved == 20
    # Settling one at a higher charge than reserved leaves less room.
    sent = [i for i, ok in zip(ids, results, strict=True) if ok]
    ledger.apply([Created(sent[0], batch_id, "p0", 7, 5, keep_claim=True)])
    batch = ledger.get_batch_by_id(batch_id)
    assert (batch.credits_net, batch.credits_reserved) == (7, 15)
    assert ledger.apply([BeginSend(ids[5], batch_id, "w", 1)]) == [False]
    # A refund frees budget again.
    ledger.apply([RenderFinished(sent[0], batch_id, "p0", "failed", refund=7)])
    assert ledger.apply([BeginSend(ids[5], batch_id, "w", 5)]) == [True]


def test_begin_send_refuses_an_item_another_worker_holds(ledger: Ledger) -> None:
    batch_id = _batch(ledger, 1)
    [item] = _claim(ledger, batch_id, "w1")
    assert ledger.apply([BeginSend(item, batch_id, "w2", 5)]) == [None]
    assert ledger.apply([BeginSend(item, batch_id, "w1", 5)]) == [True]


def test_a_charge_and_a_refund_are_recorded_once(ledger: Ledger) -> None:
    batch_id = _batch(ledger, 1)
    [item] = _claim(ledger, batch_id, "w")
    ledger.apply([BeginSend(item, batch_id, "w", 5)])
    ledger.apply([Created(item, batch_id, "p1", 5, 5, keep_claim=True)])
    ledger.apply([RenderFinished(item, batch_id, "p1", "failed", refund=5)])
    assert ledger.record_refund(batch_id, item, "p1", 5) is False
    [summary] = ledger.batch_summaries()
    assert (summary.credits_charged, summary.credits_refunded) == (5, 5)
    assert ledger.get_batch_by_id(batch_id).credits_net == 0


def test_unconfirmed_keeps_its_reservation(ledger: Ledger) -> None:
    batch_id = _batch(ledger, 2, budget=100)
    a, b = _claim(ledger, batch_id, "w")
    ledger.apply([BeginSend(a, batch_id, "w", 5), BeginSend(b, batch_id, "w", 5)])
    ledger.apply(
        [
            SendFailed(a, batch_id, "unconfirmed", 5, message="lost"),
            SendFailed(b, batch_id, "failed", 5, failure=FAILURE_REFUSED, status=422),
        ]
    )
    assert ledger.get_batch_by_id(batch_id).credits_reserved == 5
    counts = ledger.state_counts(batch_id)
    assert (counts["unconfirmed"], counts["failed"]) == (1, 1)


def test_requeue_follows_the_resume_rules(ledger: Ledger) -> None:
    batch_id = _batch(ledger, 5)
    ids = _claim(ledger, batch_id, "w")
    ledger.apply([BeginSend(i, batch_id, "w", 5) for i in ids])
    ledger.apply(
        [
            SendFailed(ids[0], batch_id, "failed", 5, failure=FAILURE_TRANSIENT, status=503),
            SendFailed(ids[1], batch_id, "failed", 5, failure=FAILURE_REFUSED, status=422),
            SendFailed(ids[2], batch_id, "unconfirmed", 5),
            Created(ids[3], batch_id, "p3", 5, 5, keep_claim=True),
            Created(ids[4], batch_id, "p4", 5, 5, keep_claim=True),
        ]
    )
    ledger.apply(
        [
            RenderFinished(ids[3], batch_id, "p3", "failed", refund=5, failure=FAILURE_RENDER),
            RenderFinished(ids[4], batch_id, "p4", "failed", failure=FAILURE_DOWNLOAD),
        ]
    )
    ledger.apply([ReleaseClaims(tuple(ids))])
    counts = ledger.requeue(batch_id, retry_failed=False, resend_unconfirmed=False)
    assert (counts.retried, counts.repoll, counts.resend) == (2, 1, 0)
    states = ledger.state_counts(batch_id)
    assert (states["pending"], states["failed"], states["unconfirmed"]) == (2, 1, 1)
    assert states["submitted"] == 1
    counts = ledger.requeue(batch_id, retry_failed=True, resend_unconfirmed=True)
    assert (counts.retried, counts.resend) == (1, 1)
    assert ledger.state_counts(batch_id)["pending"] == 4


def test_recovery_marks_a_dead_workers_sends_in_doubt(ledger: Ledger) -> None:
    batch_id = _batch(ledger, 3)
    ghost = WorkerRecord(
        id="ghost",
        batch_id=batch_id,
        host=os.uname().nodename,
        pid=2**22 + 12345,  # above pid_max: no such process
        pid_start=None,
        in_flight=1,
        started_at=utcnow(),
        heartbeat_at=utcnow(),
        stopped_at=None,
    )
    ledger.register_worker(ghost)
    a, b, c = _claim(ledger, batch_id, "ghost")
    ledger.apply([BeginSend(a, batch_id, "ghost", 5)])
    me = new_worker(batch_id)
    result = ledger.recover(batch_id, is_dead=lambda w: is_dead(w, me=me.id))
    assert (result.unconfirmed, result.released, result.dead_workers) == (1, 2, 1)
    assert _claim(ledger, batch_id, me.id) == [b, c]


def test_live_workers_keep_their_claims(ledger: Ledger) -> None:
    batch_id = _batch(ledger, 2)
    me = new_worker(batch_id)
    ledger.register_worker(me)
    _claim(ledger, batch_id, me.id)
    other = new_worker(batch_id)
    result = ledger.recover(batch_id, is_dead=lambda w: is_dead(w, me=other.id))
    assert (result.unconfirmed, result.released) == (0, 0)
    assert ledger.held_elsewhere(batch_id, other.id) == 2


def test_expired_leases_are_claimable(ledger: Ledger) -> None:
    batch_id = _batch(ledger, 2)
    past = utcnow() - timedelta(seconds=1)
    ledger.claim(batch_id, "old", states=["pending"], limit=10, lease_until=past)
    assert len(_claim(ledger, batch_id, "new")) == 2
