"""A hostile or broken API (issue 10), end to end: the real client against the
sandbox's fault flags, a real SQLite ledger, the library as the CLI calls it.

For every case the server's journal is held against the ledger: no project is
created twice unless it was refunded, every charge the server took is in the
ledger once the run (or reconcile) has seen it, and `status` and `audit`
still work and agree with the server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Batch, prompts

import batcher
from batcher.ledger import FAILURE_LOST
from batcher.reports import audit

MakeBatch = Any
COUNT = 6


def journal(batch: Batch) -> list[dict[str, Any]]:
    return [entry.as_dict() for entry in batch.sandbox.journal()]


def server_net(batch: Batch) -> int:
    return sum(entry["credits_net"] for entry in journal(batch))


def creates_per_item(batch: Batch) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in journal(batch):
        counts[entry["name"]] = counts.get(entry["name"], 0) + 1
    return counts


def reconcile(batch: Batch) -> Any:
    return batcher.reconcile(
        batch.name,
        db=batch.db_url,
        base_url=batch.sandbox.base_url,
        env={"MAGIC_HOUR_API_KEY": batch.sandbox.key},
    )


def audit_totals(batch: Batch) -> Any:
    with batch.ledger() as ledger:
        return audit.build_audit(ledger, audit.AuditQuery()).totals


def reports_agree(batch: Batch) -> tuple[int, int, int]:
    """status and audit work, agree with each other; (charged, refunded, net)."""
    [status] = batcher.status(db=batch.db_url).batches
    totals = audit_totals(batch)
    assert (status.credits_charged, status.credits_refunded, status.credits_net) == (
        totals.credits_charged,
        totals.credits_refunded,
        totals.credits_net,
    )
    return status.credits_charged, status.credits_refunded, status.credits_net


# --------------------------------------------------------------------------- point 1


@pytest.mark.parametrize("fault", [{"poll_404_rate": 1.0}, {"cancel_rate": 1.0}])
def test_a_lost_project_fails_and_is_created_again_only_with_retry_failed(
    make_batch: MakeBatch, fault: dict[str, float]
) -> None:
    batch = make_batch(prompts(COUNT), **fault)
    summary = batch.run()
    assert summary.exit_code == 1
    assert summary.states["failed"] == COUNT
    with batch.ledger() as ledger:
        [record] = ledger.batch_summaries()
        assert {item.failure for item in ledger.items(record.id)} == {FAILURE_LOST}
    assert set(creates_per_item(batch).values()) == {1}, "re-created within the run"

    again = batch.run(resume=True)  # resume never re-creates a lost project
    assert again.states["failed"] == COUNT
    assert set(creates_per_item(batch).values()) == {1}, "re-created by resume"
    assert reports_agree(batch)[2] == server_net(batch)

    batch.sandbox.set_faults(poll_404_rate=0.0, cancel_rate=0.0)
    retried = batch.run(resume=True, retry_failed=True)
    assert retried.exit_code == 0
    assert set(creates_per_item(batch).values()) == {2}
    assert reports_agree(batch)[2] == server_net(batch)


def test_a_refunded_render_error_is_still_created_again(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(COUNT), render_error_rate=1.0)
    summary = batch.run(render_retries=1)
    assert summary.states["failed"] == COUNT
    assert set(creates_per_item(batch).values()) == {2}  # refunded: one more try is cheap
    assert reports_agree(batch) == (
        sum(e["credits_charged"] for e in journal(batch)),
        sum(e["credits_refunded"] for e in journal(batch)),
        0,
    )


# --------------------------------------------------------------------------- points 2, 4


@pytest.mark.parametrize(
    "mode",
    [
        "no-credits",
        "string-credits",
        "float-credits",
        "bool-credits",
        "negative-credits",
        "huge-credits",
    ],
)
def test_an_unusable_charge_keeps_the_id_and_a_poll_tells_the_charge(
    make_batch: MakeBatch, mode: str
) -> None:
    batch = make_batch(prompts(COUNT), create_garble=mode)
    summary = batch.run()
    assert summary.exit_code == 0, summary
    assert summary.states["complete"] == COUNT
    assert any("no usable credits_charged" in warning for warning in summary.warnings)
    assert set(creates_per_item(batch).values()) == {1}
    with batch.ledger() as ledger:
        [record] = ledger.batch_summaries()
        items = list(ledger.items(record.id))
        known = {p.project_id: p for p in ledger.known_projects(record.id)}
    assert {item.project_id for item in items} == {e["id"] for e in journal(batch)}
    for entry in journal(batch):
        assert known[entry["id"]].charged - known[entry["id"]].refunded == entry["credits_net"]
    assert reports_agree(batch)[2] == server_net(batch)


def test_an_unusable_charge_seen_only_by_reconcile(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(COUNT), create_garble="huge-credits")
    summary = batch.run(wait=False)
    assert summary.states["submitted"] == COUNT
    assert reports_agree(batch)[0] == 0  # nothing known yet, nothing invented
    [row, *_] = batcher.items(batch.name, db=batch.db_url).items
    assert row.reason is not None and "charge unknown" in row.reason
    report = reconcile(batch)
    assert len(report.charges) == COUNT
    assert reports_agree(batch)[2] == server_net(batch)
    again = reconcile(batch)
    assert again.charges == () and again.refunds == ()
    assert reports_agree(batch)[2] == server_net(batch)


# --------------------------------------------------------------------------- point 5


def test_surcharges_are_recorded_and_warned_about_in_run(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(COUNT), surcharge_rate=1.0)
    summary = batch.run()
    assert summary.exit_code == 0
    assert sum(e["credits_surcharged"] for e in journal(batch)) > 0
    assert any("charged more" in warning for warning in summary.warnings)
    charged, _refunded, net = reports_agree(batch)
    assert net == server_net(batch)
    assert charged == sum(e["credits_charged"] + e["credits_surcharged"] for e in journal(batch))


def test_surcharges_are_recorded_and_warned_about_by_reconcile(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(COUNT), surcharge_rate=1.0, render_seconds=0.0)
    batch.run(wait=False)
    report = reconcile(batch)
    assert len(report.charges) == COUNT and not any(c.first for c in report.charges)
    assert any("charged more" in warning for warning in report.warnings)
    assert reports_agree(batch)[2] == server_net(batch)
    again = reconcile(batch)
    assert again.charges == ()
    assert reports_agree(batch)[2] == server_net(batch)


# --------------------------------------------------------------------------- points 6, 8


@pytest.mark.parametrize("mode", ["status-302", "status-204", "non-json", "endless"])
def test_an_answer_that_is_no_answer_leaves_the_create_in_doubt(
    make_batch: MakeBatch, mode: str
) -> None:
    batch = make_batch(prompts(3), create_garble=mode)
    summary = batch.run(max_body_bytes=64 * 1024)
    assert summary.exit_code == 1
    assert summary.states["unconfirmed"] == 3, summary.states
    assert summary.states["failed"] == 0  # never "refused": --retry-failed must not pay again
    batch.run(resume=True, retry_failed=True)
    assert set(creates_per_item(batch).values()) == {1}


def test_a_poll_body_over_the_cap_is_retried_not_read(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(3), poll_garble="endless")
    summary = batch.run(max_body_bytes=64 * 1024, render_timeout=1.0)
    assert summary.states["submitted"] == 3  # looked at again until the deadline
    assert any("unusable answer" in w and "max-body-bytes" in w for w in summary.warnings)
    batch.sandbox.set_faults(poll_garble=None)
    assert batch.run(resume=True).states["complete"] == 3
    assert set(creates_per_item(batch).values()) == {1}


# --------------------------------------------------------------------------- point 9


@pytest.mark.parametrize("fault", [{"stuck_rate": 1.0}, {"poll_garble": "unknown-status"}])
def test_a_render_past_its_deadline_is_reported_and_left_submitted(
    make_batch: MakeBatch, fault: dict[str, Any]
) -> None:
    batch = make_batch(prompts(3), **fault)
    summary = batch.run(render_timeout=1.0)
    assert summary.exit_code == 1
    assert summary.states["submitted"] == 3
    assert any("--render-timeout" in warning for warning in summary.warnings)
    if "poll_garble" in fault:
        assert any("unknown status 'paused'" in warning for warning in summary.warnings)
    assert summary.counters.polls < 3 * 50  # polled at the planner's pace, then let go
    assert set(creates_per_item(batch).values()) == {1}


# --------------------------------------------------------------------------- point 11


def test_the_key_echoed_by_the_api_is_stored_nowhere(make_batch: MakeBatch, tmp_path: Path) -> None:
    key = "mhk_live_Q7d9Xk2LmZp4Rt8Vw3Ys"
    batch = make_batch(prompts(3), key=key, poll_garble="key-echo")
    summary = batch.run(key=key)
    assert summary.states["failed"] == 3
    pieces = {key[i : i + 8].lower() for i in range(len(key) - 7)}
    stored = [path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()]
    with batch.ledger() as ledger:
        [record] = ledger.batch_summaries()
        messages = [item.error_message or "" for item in ledger.items(record.id)]
    assert all("[redacted]" in message for message in messages), messages
    for blob in [*stored, *(m.encode() for m in messages), json.dumps(summary.warnings).encode()]:
        lowered = blob.lower()
        for piece in pieces:
            assert piece.encode() not in lowered


# --------------------------------------------------------------------------- point 7


def test_reports_count_the_images_saved_not_those_ordered(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(3, image_count=2), bad_downloads="short")
    summary = batch.run()
    assert summary.states["failed"] == 3  # one URL for two images: not complete
    assert summary.counters.images == 3  # the one image each project did list
    assert audit_totals(batch).images == 3
    batch.sandbox.set_faults(bad_downloads=None)
    resumed = batch.run(resume=True)  # fresh URLs, nothing paid again
    assert resumed.states["complete"] == 3
    assert audit_totals(batch).images == 6
    assert set(creates_per_item(batch).values()) == {1}
