"""The runner against the sandbox over real HTTP, with a real SQLite ledger.

Each test proves from the sandbox's journal what the server saw: nothing
created twice, nothing lost, and credits that match to the credit.
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Batch, assert_exactly_once, prompts
from PIL import Image

from batcher.client import retry
from batcher.errors import AuthError, OutputFolderError, PreflightError
from batcher.ledger import FAILURE_TRANSIENT
from batcher.run.batch_run import STOP_BUDGET, STOP_UNREACHABLE
from batcher.run.liveness import new_worker

MakeBatch = Any


def _states(batch: Batch) -> dict[str, int]:
    with batch.ledger() as ledger:
        [summary] = ledger.batch_summaries()
    return {k: v for k, v in summary.states.items() if v}


def test_happy_path_saves_every_image_once(make_batch: MakeBatch) -> None:
    batch = make_batch(
        [*prompts(6), *prompts(2, model="flux-schnell", image_count=3), "a bare prompt"]
    )
    result = batch.run()
    assert result.succeeded
    assert _states(batch) == {"complete": 9}
    assert_exactly_once(batch)
    journal = batch.sandbox.journal()
    assert len(journal) == 9
    images = sorted((batch.tmp / "out").glob("*.png"))
    assert len(images) == 6 + 2 * 3 + 1
    with Image.open(images[0]) as image:
        assert image.format == "PNG"
    lines = [
        json.loads(line) for line in (batch.tmp / "out" / "manifest.jsonl").read_text().splitlines()
    ]
    manifest = list({line["key"]: line for line in lines}.values())  # the latest line per item
    assert {m["state"] for m in manifest} == {"complete"}
    assert sum(len(m["files"]) for m in manifest) == len(images)
    assert result.counters.credits_charged == sum(e.credits_charged for e in journal)


def test_rerunning_the_job_sends_nothing_new(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(4))
    batch.run()
    again = batch.run()
    assert again.succeeded
    assert again.counters.sent == 0
    assert len(batch.sandbox.journal()) == 4


def test_429_without_retry_after_from_a_render_cap(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(24), max_in_flight=3, render_seconds=0.1)
    result = batch.run(concurrency=16)
    assert result.succeeded
    assert result.counters.throttled > 0
    assert_exactly_once(batch)
    assert len(batch.sandbox.journal()) == 24


def test_429_with_retry_after_from_a_rate_limit(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(20), rate_limit=10, retry_after=0.2)
    result = batch.run(concurrency=16)
    assert result.succeeded
    assert result.counters.throttled > 0
    assert_exactly_once(batch)


def test_5xx_answers_are_retried_and_nothing_is_charged_twice(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(20), error_rate=0.3, seed=5)
    result = batch.run()
    assert result.succeeded
    assert_exactly_once(batch)
    assert len(batch.sandbox.journal()) == 20
    assert batch.sandbox.stats().count("POST /v1/ai-image-generator", 200) == 20


def test_creates_refused_every_time_are_left_for_resume_by_the_retry_policy(
    make_batch: MakeBatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="batcher.client.retry")
    batch = make_batch(prompts(3), error_rate=1.0)
    result = batch.run(concurrency=2)
    assert result.states["failed"] == 3
    with batch.ledger() as ledger:
        items = list(ledger.items(1))
    assert {i.failure for i in items} == {FAILURE_TRANSIENT}
    assert batch.sandbox.journal() == [], "a 5xx creates nothing"
    refused = sum(
        batch.sandbox.stats().count("POST /v1/ai-image-generator", status)
        for status in (500, 502, 503)
    )
    assert refused == 3 * retry.CREATE_ATTEMPTS
    # The policy's retries, logged per item: attempts 1 to 5, then it gave up.
    records = [r for r in caplog.records if r.__dict__.get("event") == "retry.create"]
    by_key: dict[str, list[int]] = {}
    for record in records:
        by_key.setdefault(record.__dict__["key"], []).append(record.__dict__["attempt"])
    assert by_key == {i.key: list(range(1, retry.CREATE_ATTEMPTS)) for i in items}
    # They were refused for now, not for good: a plain resume sends them again.
    batch.sandbox.set_faults(error_rate=0.0)
    again = batch.run(resume=True)
    assert again.succeeded
    assert again.counters.sent == 3


def test_an_unreachable_api_stops_sending_with_nothing_sent(make_batch: MakeBatch) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    batch = make_batch(prompts(20))
    result = batch.run(base_url=f"http://127.0.0.1:{port}", concurrency=4, outage_tolerance=0.3)
    assert result.stopped == STOP_UNREACHABLE
    assert result.stop_detail is not None and "--outage-tolerance 0.3" in result.stop_detail
    assert result.unsent == 20
    assert _states(batch) == {"pending": 20}


def test_an_output_folder_that_is_a_file_is_refused_before_sending(
    make_batch: MakeBatch, tmp_path: Path
) -> None:
    batch = make_batch(prompts(3))
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(OutputFolderError):
        batch.run(out_dir=tmp_path / "taken")
    assert batch.sandbox.journal() == []
    assert not (tmp_path / "ledger.db").exists(), "refused before the ledger was touched"


def test_dropped_connections_leave_items_in_doubt_never_resent(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(30), drop_rate=0.25, seed=11)
    result = batch.run()
    in_doubt = result.states["unconfirmed"]
    assert in_doubt > 0
    assert not result.succeeded
    assert_exactly_once(batch)
    dropped = [e for e in batch.sandbox.journal() if e.dropped]
    assert len(dropped) == in_doubt
    # A plain resume does not send them again...
    batch.sandbox.set_faults(drop_rate=0.0)
    again = batch.run(resume=True)
    assert again.counters.sent == 0
    assert again.states["unconfirmed"] == in_doubt
    # ...only the user's explicit word does.
    final = batch.run(resume=True, resend_unconfirmed=True)
    assert final.succeeded
    assert final.counters.sent == in_doubt
    assert len(batch.sandbox.journal()) == 30 + in_doubt


def test_failed_renders_are_refunded_and_created_again(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(30), render_error_rate=0.4, seed=3)
    result = batch.run(render_retries=1)
    assert_exactly_once(batch)
    journal = batch.sandbox.journal()
    errors = [e for e in journal if e.status == "error"]
    assert errors, "the seed should fail some renders"
    assert all(e.credits_refunded == e.credits_charged for e in errors)
    assert result.counters.credits_refunded == sum(e.credits_refunded for e in errors)
    # Each item got at most two creates: the first and one retry.
    per_name: dict[str, int] = {}
    for entry in journal:
        per_name[entry.name or ""] = per_name.get(entry.name or "", 0) + 1
    assert max(per_name.values()) <= 2
    failed = result.states["failed"]
    assert failed == sum(
        1
        for n in per_name
        if all(e.status == "error" for e in journal if e.name == n) and per_name[n] == 2
    )
    if failed:
        batch.sandbox.set_faults(render_error_rate=0.0)
        again = batch.run(resume=True)
        assert again.succeeded
        assert again.counters.sent == failed
        assert_exactly_once(batch)


def test_expired_download_urls_are_fetched_again(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(3), download_ttl=0.0)
    result = batch.run()
    # Every URL is born expired: fresh GETs cannot help, so the items wait for resume.
    assert result.states["failed"] == 3
    with batch.ledger() as ledger:
        assert {i.failure for i in ledger.items(1)} == {"download"}
    batch.sandbox.set_faults(download_ttl=3600.0)
    again = batch.run(resume=True)
    assert again.succeeded
    assert again.counters.sent == 0, "a download failure never re-creates the image"
    assert len(list((batch.tmp / "out").glob("*.png"))) == 3
    assert len(batch.sandbox.journal()) == 3


def test_no_wait_submits_and_resume_follows(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(5))
    result = batch.run(wait=False)
    assert result.succeeded
    assert result.states["submitted"] == 5
    again = batch.run(resume=True)
    assert again.succeeded
    assert again.states["complete"] == 5
    assert again.counters.sent == 0
    assert len(list((batch.tmp / "out").glob("*.png"))) == 5


def test_a_rejected_key_stops_everything_and_creates_nothing(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(5))
    with pytest.raises(AuthError):
        batch.run(key="not-the-key")
    assert batch.sandbox.journal() == []
    assert _states(batch) == {"pending": 5}


def test_refusals_fail_the_item_with_the_apis_message(make_batch: MakeBatch) -> None:
    batch = make_batch([*prompts(2), *prompts(2, model="seedream-v4")], tier="free")
    result = batch.run()
    assert result.states == {**result.states, "complete": 2, "failed": 2}
    with batch.ledger() as ledger:
        failed = [i for i in ledger.items(1) if i.state == "failed"]
    assert {i.failure for i in failed} == {"refused"}
    assert {i.error_status for i in failed} == {403}
    assert all(i.error_message for i in failed)
    # Refusals other than 429/5xx come back only with --retry-failed.
    assert batch.run(resume=True).counters.sent == 0
    assert batch.run(resume=True, retry_failed=True).counters.sent == 2


def test_preflight_refuses_what_the_tier_does_not_allow(make_batch: MakeBatch) -> None:
    batch = make_batch([*prompts(2), *prompts(1, model="nano-banana")], tier="free")
    with pytest.raises(PreflightError, match="tier"):
        batch.run(preflight=True)
    assert batch.sandbox.journal() == []


def test_preflight_refuses_a_run_the_balance_cannot_pay(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(10), credits=30)
    with pytest.raises(PreflightError, match="50 credits"):
        batch.run(preflight=True)
    assert batch.sandbox.journal() == []


def test_budget_holds_under_concurrency_when_charges_exceed_estimates(
    make_batch: MakeBatch,
) -> None:
    # Each item is estimated at 5 but charged 8: the budget must still hold
    # to within what the estimates missed on items already in flight.
    batch = make_batch(prompts(100), charge_factor=1.6)
    result = batch.run(concurrency=64, budget=200)
    assert result.stopped == STOP_BUDGET
    assert result.unsent > 0
    net = sum(e.credits_charged - e.credits_refunded for e in batch.sandbox.journal())
    # In flight at once: at most `concurrency` reservations of 5 undershooting by 3.
    assert net <= 200 + 64 * 3
    # Once a real charge is seen, reservations use it: the overshoot is far smaller.
    assert net <= 200 + 8
    assert_exactly_once(batch)


def test_budget_is_exact_when_estimates_are(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(50))
    result = batch.run(concurrency=32, budget=102)
    assert result.stopped == STOP_BUDGET
    net = sum(e.credits_charged for e in batch.sandbox.journal())
    assert net == 100
    assert result.unsent == 30


def test_refunds_free_budget_for_retries(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(10), render_error_rate=1.0)
    result = batch.run(concurrency=4, budget=10, render_retries=1)
    net = sum(e.credits_charged - e.credits_refunded for e in batch.sandbox.journal())
    assert net == 0
    assert result.states["failed"] == 10


def test_manifest_and_files_never_collide_for_identical_prompts(
    make_batch: MakeBatch, tmp_path: Path
) -> None:
    batch = make_batch(["same words"] * 3)
    assert batch.run().succeeded
    assert len(list((tmp_path / "out").glob("*.png"))) == 3


def test_workers_split_the_batchs_shared_ceilings(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(6))
    with batch.ledger() as ledger:
        record, _ = ledger.open_batch(
            batch.name, job_path=None, job_hash=None, budget=None, settings={}
        )
        ledger.register_worker(new_worker(record.id))  # a peer, alive right now

    ceilings: list[tuple[int, float | None]] = []
    result = batch.run(
        concurrency=16,
        batch_rate=8.0,
        batch_concurrency=6,
        after=lambda run: ceilings.append((run.limiter.ceiling, run.limiter.rate)),
    )
    assert result.succeeded
    assert ceilings == [(3, 4.0)]


def test_renders_adopted_on_resume_teach_the_poll_planner_nothing(make_batch: MakeBatch) -> None:
    # Their age is unknown: learning from it would teach render times of zero.
    batch = make_batch(prompts(5))
    batch.run(wait=False)
    learned: list[int] = []
    result = batch.run(resume=True, after=lambda run: learned.append(run.follower.planner.samples))
    assert result.succeeded
    assert learned == [0]


def test_a_batch_with_nothing_left_to_do_is_marked_finished(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(3))
    batch.run(wait=False)
    with batch.ledger() as ledger:
        [summary] = ledger.batch_summaries()
    assert summary.finished_at is None, "renders are still to follow"
    batch.run(resume=True)
    with batch.ledger() as ledger:
        [summary] = ledger.batch_summaries()
    assert summary.finished_at is not None
