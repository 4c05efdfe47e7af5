"""PostgreSQL row locks: a worker's heartbeat and its own group commits touch the
same item rows at once, and must never deadlock (issue 11, point 7). Both lock
the rows in id order first; a deadlock with some other transaction is still
possible, and is then run again and logged as one line, not a traceback.

On the real PostgreSQL server only: SQLite has one writer at a time.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from batcher.jobfile.items import ItemSettings, JobItem
from batcher.ledger import BeginSend, Created, Ledger, SendFailed, utcnow

pytestmark = pytest.mark.postgres

SETTINGS = ItemSettings("z-image-turbo", None, "1:1", "general", 1)
ITEMS = 200
ROUNDS = 40


@pytest.fixture
def ledger(postgres_database: str) -> Iterator[Ledger]:
    with Ledger.open(postgres_database) as opened:
        yield opened


def claimed_batch(
    ledger: Ledger, *workers: str, budget: int | None = None
) -> tuple[int, list[list[int]]]:
    """A batch of ITEMS items, split between `workers` (default one, "w")."""
    batch, _ = ledger.open_batch("locks", job_path=None, job_hash=None, budget=budget, settings={})
    ledger.sync_items(
        batch.id,
        [JobItem(n, f"k{n}", f"prompt {n}", SETTINGS, "job.yaml", n + 1) for n in range(ITEMS)],
        estimate=lambda _s: (5, True),
        project_name=lambda item: item.key,
    )
    lease = utcnow() + timedelta(minutes=10)
    share = ITEMS // len(workers or ("w",))
    claimed = [
        [
            item.id
            for item in ledger.claim(
                batch.id, worker, states=["pending"], limit=share, lease_until=lease
            )
        ]
        for worker in workers or ("w",)
    ]
    return batch.id, claimed


def conflicts(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "ledger.conflict"]


def test_heartbeats_and_group_commits_of_one_worker_never_deadlock(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    """The overlap of issue 11: heartbeats (every item the worker holds) while its
    group commits update the same rows, each group in a shuffled order."""
    batch_id, [ids] = claimed_batch(ledger)
    done = threading.Event()
    errors: list[BaseException] = []
    beats = 0

    def heartbeats() -> None:
        nonlocal beats
        try:
            while not done.is_set():
                lease = utcnow() + timedelta(minutes=10)
                ledger.heartbeat("w", lease_until=lease, in_flight=len(ids))
                beats += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def group_commits() -> None:
        shuffled = random.Random(7)
        try:
            for _ in range(ROUNDS):
                order = ids[:]
                shuffled.shuffle(order)
                assert ledger.apply([BeginSend(i, batch_id, "w", 5) for i in order]) == [
                    True
                ] * len(order)
                shuffled.shuffle(order)
                ledger.apply([SendFailed(i, batch_id, "pending", 5) for i in order])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    with caplog.at_level(logging.WARNING):
        threads = [threading.Thread(target=heartbeats), threading.Thread(target=group_commits)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not errors, errors
    assert beats > ROUNDS // 4, f"only {beats} heartbeats overlapped the commits"
    assert conflicts(caplog) == [], caplog.text
    assert ledger.state_counts(batch_id)["pending"] == ITEMS


def test_workers_sharing_a_budget_never_deadlock(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    """Each group settles one create (a charge row, whose foreign key share-locks the
    batch row) and reserves budget for the next (which locks the batch row): two
    workers doing so at once must wait on each other, never deadlock."""
    batch_id, shares = claimed_batch(ledger, "w1", "w2", budget=10**9)
    errors: list[BaseException] = []

    def work(worker: str, ids: list[int]) -> None:
        try:
            assert ledger.apply([BeginSend(ids[0], batch_id, worker, 5)]) == [True]
            for sent, following in zip(ids, [*ids[1:], None], strict=True):
                group: list[Any] = [Created(sent, batch_id, f"p{sent}", 5, 5, keep_claim=True)]
                if following is not None:
                    group.append(BeginSend(following, batch_id, worker, 5))
                ledger.apply(group)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with caplog.at_level(logging.WARNING):
        threads = [
            threading.Thread(target=work, args=(worker, ids))
            for worker, ids in zip(("w1", "w2"), shares, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not errors, errors
    assert conflicts(caplog) == [], caplog.text
    batch = ledger.get_batch_by_id(batch_id)
    assert (batch.credits_net, batch.credits_reserved) == (5 * ITEMS, 0)
    assert ledger.state_counts(batch_id)["submitted"] == ITEMS


def _admin(url: str) -> psycopg.Connection[Any]:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    return psycopg.connect(dsn, autocommit=True)


def test_a_deadlock_with_another_transaction_is_run_again_and_logged_in_one_line(
    ledger: Ledger, postgres_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A foreign transaction that locks the worker's rows out of order: the heartbeat
    loses the deadlock, is run again once the other is done, and says so in one line."""
    _batch_id, [ids] = claimed_batch(ledger)
    first, last = min(ids), max(ids)
    with _admin(postgres_database) as other, _admin(postgres_database) as watcher:
        # The heartbeat's server process, not this one, must find the deadlock.
        other.execute("SET deadlock_timeout = '60s'")
        other.execute("BEGIN")
        other.execute("SELECT id FROM items WHERE id = %s FOR UPDATE", (last,))
        errors: list[BaseException] = []

        def beat() -> None:
            try:
                ledger.heartbeat("w", lease_until=utcnow() + timedelta(minutes=5), in_flight=0)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        with caplog.at_level(logging.WARNING):
            thread = threading.Thread(target=beat)
            thread.start()
            # Await the heartbeat holding every row but `last`, waiting on that one.
            deadline = time.monotonic() + 30
            while not watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> %s",
                (other.info.backend_pid,),
            ).fetchone():
                assert time.monotonic() < deadline, "the heartbeat never waited on the lock"
                time.sleep(0.01)
            # Now wait on a row the heartbeat holds: a cycle, found by its side.
            other.execute("SELECT id FROM items WHERE id = %s FOR UPDATE", (first,))
            other.execute("COMMIT")
            thread.join(timeout=60)
    assert not errors, errors
    # Usually one retry; on a loaded machine the retry can meet the other
    # transaction's second lock too and lose once more. Each is one line.
    records = conflicts(caplog)
    assert records, caplog.text
    for record in records:
        assert record.levelno == logging.WARNING
        assert record.exc_info is None
        assert "\n" not in record.getMessage()
    assert records[0].getMessage() == (
        "ledger transaction lost a deadlock; running it again (attempt 2 of 5)"
    )
