"""`reconcile` against the in-process sandbox over real HTTP and a real SQLite ledger.

The projects are created on the sandbox with plain httpx POSTs, and the
ledger is told about them through its own operations, exactly as a run that
stopped following its renders (`--no-wait`, a crash) would have left it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from batcher.client import retry
from batcher.client.body import create_body
from batcher.client.magic_hour import MagicHourClient
from batcher.errors import AuthError, ConfigError
from batcher.jobfile.items import ItemSettings, JobItem, project_name
from batcher.ledger import BeginSend, Created, Ledger, RenderFinished, SendFailed, utcnow
from batcher.reports.reconcile import ReconcileReport, reconcile
from batcher.sandbox import SandboxHandle
from batcher.settings import ApiConfig

MakeSandbox = Callable[..., SandboxHandle]  # the `make_sandbox` fixture of tests/conftest.py

SETTINGS = ItemSettings("z-image-turbo", "1k", "1:1", "general", 2)


@dataclass(frozen=True)
class Seeded:
    batch_id: int
    projects: dict[str, int]  # project id -> item id
    doubtful: dict[str, str]  # item key -> the name it was sent under


def post_create(sandbox: SandboxHandle, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{sandbox.base_url}/v1/ai-image-generator",
        json=body,
        headers={"Authorization": f"Bearer {sandbox.key}"},
        timeout=10.0,
    )
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def seed(
    ledger: Ledger,
    sandbox: SandboxHandle,
    *,
    batch: str = "late",
    created: int = 4,
    lost: int = 2,
    settings: dict[str, Any] | None = None,
) -> Seeded:
    """`created` items whose create answered, `lost` whose answer was lost (in doubt).

    The lost ones are really created on the sandbox too (the server got them),
    so their `name` can be looked up in its journal.
    """
    record, _ = ledger.open_batch(
        batch, job_path="job.yaml", job_hash="h", budget=None, settings=settings or {}
    )
    jobs = [
        JobItem(n, f"{batch}-k{n}", f"prompt number {n} of {batch}", SETTINGS, "job.yaml", n + 1)
        for n in range(created + lost)
    ]
    ledger.sync_items(
        record.id,
        jobs,
        estimate=lambda _s: (10, True),
        project_name=lambda item: project_name(batch, item.key, item.settings),
    )
    items = ledger.claim(
        record.id, "w", states=["pending"], limit=100, lease_until=utcnow() + timedelta(hours=1)
    )
    projects: dict[str, int] = {}
    doubtful: dict[str, str] = {}
    for n, item in enumerate(items):
        assert ledger.apply([BeginSend(item.id, record.id, "w", 10)]) == [True]
        answer = post_create(sandbox, create_body(item.prompt, item.settings, item.project_name))
        if n < created:
            ledger.apply(
                [
                    Created(
                        item.id,
                        record.id,
                        answer["id"],
                        answer["credits_charged"],
                        10,
                        keep_claim=False,
                    )
                ]
            )
            projects[answer["id"]] = item.id
        else:
            ledger.apply([SendFailed(item.id, record.id, "unconfirmed", 10, message="answer lost")])
            doubtful[item.key] = item.project_name
    return Seeded(record.id, projects, doubtful)


def wait_for_renders(sandbox: SandboxHandle, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(entry.status in ("complete", "error") for entry in sandbox.journal()):
            return
        time.sleep(0.05)
    raise AssertionError("the sandbox's renders did not finish")


def ledger_refunds(ledger: Ledger, batch_id: int) -> dict[str, int]:
    return {
        project.project_id: project.refunded
        for project in ledger.known_projects(batch_id)
        if project.refunded
    }


async def run_reconcile(
    ledger: Ledger, sandbox: SandboxHandle, batch: str | None = None, *, key: str | None = None
) -> ReconcileReport:
    config = ApiConfig(base_url=sandbox.base_url, api_key=key or sandbox.key)
    async with MagicHourClient(config, concurrency=4) as client:
        return await reconcile(ledger, client, batch, concurrency=4)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}") as opened:
        yield opened


async def test_refunds_that_happened_after_the_run_are_recorded_once(
    ledger: Ledger, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox(render_error_rate=1.0, render_seconds=0.2)
    seeded = seed(ledger, sandbox, created=5, lost=2)
    assert ledger_refunds(ledger, seeded.batch_id) == {}  # the run stopped before the ends
    wait_for_renders(sandbox)

    report = await run_reconcile(ledger, sandbox)

    journal = {entry.id: entry for entry in sandbox.journal()}
    refunded = ledger_refunds(ledger, seeded.batch_id)
    assert refunded == {pid: journal[pid].credits_refunded for pid in seeded.projects}
    assert all(credits > 0 for credits in refunded.values())
    assert report.projects_polled == 5
    assert report.statuses == {"error": 5}
    assert len(report.refunds) == 5
    assert report.credits_refunded == sum(journal[pid].credits_refunded for pid in seeded.projects)
    assert report.not_found == report.errors == report.mismatches == ()
    assert report.complete
    [summary] = ledger.batch_summaries("late")
    assert summary.credits_refunded == report.credits_refunded
    assert summary.credits_charged == summary.credits_refunded  # every render failed
    # The cached net on the batch row moved with the refunds.
    assert ledger.get_batch_by_id(seeded.batch_id).credits_net == 0

    again = await run_reconcile(ledger, sandbox, "late")
    assert again.refunds == ()
    assert again.projects_polled == 5
    assert again.mismatches == ()
    assert ledger_refunds(ledger, seeded.batch_id) == refunded


async def test_reconcile_changes_no_item_state(ledger: Ledger, make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(render_error_rate=1.0, render_seconds=0.05)
    seeded = seed(ledger, sandbox, created=3, lost=1)
    wait_for_renders(sandbox)
    before = ledger.state_counts(seeded.batch_id)
    await run_reconcile(ledger, sandbox)
    assert (
        ledger.state_counts(seeded.batch_id)
        == before
        == {
            "pending": 0,
            "sending": 0,
            "unconfirmed": 1,
            "submitted": 3,
            "complete": 0,
            "failed": 0,
        }
    )


async def test_only_failed_renders_are_refunded(ledger: Ledger, make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(render_error_rate=0.5, render_seconds=0.05, seed=7)
    seeded = seed(ledger, sandbox, created=12, lost=0)
    wait_for_renders(sandbox)
    report = await run_reconcile(ledger, sandbox)
    journal = {entry.id: entry for entry in sandbox.journal()}
    failed = {pid for pid in seeded.projects if journal[pid].status == "error"}
    assert 0 < len(failed) < 12  # the seed gives a mix
    assert {r.project_id for r in report.refunds} == failed
    assert dict(report.statuses) == {"complete": 12 - len(failed), "error": len(failed)}
    assert ledger_refunds(ledger, seeded.batch_id) == {
        pid: journal[pid].credits_refunded for pid in failed
    }


async def test_a_refund_the_run_already_recorded_is_not_recorded_again(
    ledger: Ledger, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox(render_error_rate=1.0, render_seconds=0.05)
    seeded = seed(ledger, sandbox, created=2, lost=0)
    wait_for_renders(sandbox)
    first_pid, item_id = next(iter(seeded.projects.items()))
    charge = sandbox.journal()[0].credits_charged
    ledger.apply([RenderFinished(item_id, seeded.batch_id, first_pid, "failed", refund=charge)])
    report = await run_reconcile(ledger, sandbox)
    # Polls finish in any order: compare sets.
    assert {r.project_id for r in report.refunds} == set(seeded.projects) - {first_pid}
    assert report.mismatches == ()
    [summary] = ledger.batch_summaries()
    assert summary.credits_refunded == sum(e.credits_refunded for e in sandbox.journal())


async def test_items_in_doubt_are_listed_with_the_name_to_search_for(
    ledger: Ledger, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox(render_seconds=0.05)
    seeded = seed(ledger, sandbox, created=1, lost=3)
    report = await run_reconcile(ledger, sandbox)
    assert [item.key for item in report.in_doubt] == list(seeded.doubtful)
    names_on_server = {entry.name for entry in sandbox.journal()}
    for item in report.in_doubt:
        assert item.project_name == seeded.doubtful[item.key]
        assert item.project_name in names_on_server  # findable in the web library
        assert item.batch == "late"
        assert item.prompt.startswith("prompt number")
        assert item.sent_at is not None
    assert report.refunds == ()
    assert report.statuses == {"complete": 1}


async def test_unknown_projects_are_reported_as_not_found(
    ledger: Ledger, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox(render_seconds=0.05)
    seeded = seed(ledger, sandbox, created=1, lost=0)
    # A project id the server never issued (another server's, or a typo in a restore).
    [item] = ledger.claim(
        seeded.batch_id,
        "w",
        states=["submitted"],
        limit=1,
        lease_until=utcnow() + timedelta(hours=1),
    )
    other, _ = ledger.open_batch("other", job_path=None, job_hash=None, budget=None, settings={})
    ledger.sync_items(
        other.id,
        [JobItem(0, "ghost", "ghost prompt", SETTINGS, "job.yaml", 1)],
        estimate=lambda _s: (10, True),
        project_name=lambda i: i.key,
    )
    [ghost] = ledger.claim(
        other.id, "w", states=["pending"], limit=1, lease_until=utcnow() + timedelta(hours=1)
    )
    ledger.apply([BeginSend(ghost.id, other.id, "w", 10)])
    ledger.apply([Created(ghost.id, other.id, "no-such-project", 10, 10, keep_claim=False)])
    report = await run_reconcile(ledger, sandbox)
    assert report.batches == ("late", "other")
    assert [p.project_id for p in report.not_found] == ["no-such-project"]
    assert report.not_found[0].batch == "other"
    assert report.projects_polled == 2
    assert report.complete  # a 404 is an answer
    assert item.state == "submitted"


async def test_polls_that_keep_failing_are_reported_not_fatal(
    ledger: Ledger, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox(render_seconds=0.05)
    seed(ledger, sandbox, created=3, lost=0)
    sandbox.set_faults(poll_error_rate=1.0)
    with retry.instant():
        report = await run_reconcile(ledger, sandbox)
    assert len(report.errors) == 3
    assert not report.complete
    assert report.refunds == ()


async def test_a_429_storm_slows_reconcile_down_instead_of_failing_it(
    ledger: Ledger, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox(render_seconds=0.05)
    seeded = seed(ledger, sandbox, created=40, lost=0)
    wait_for_renders(sandbox)
    # 40 polls, 8 at once, against 20 requests/s and 429s without Retry-After,
    # as the real API answers. Retries without waits (the test switch): only
    # the limiter, which every poll waits for, paces them.
    sandbox.set_faults(rate_limit=20.0)
    with retry.instant():
        config = ApiConfig(base_url=sandbox.base_url, api_key=sandbox.key)
        async with MagicHourClient(config, concurrency=8) as client:
            report = await reconcile(ledger, client, concurrency=8)
    throttled = sandbox.stats().count("GET /v1/image-projects/{id}", 429)
    assert throttled > 0, "the storm did not happen"
    assert report.errors == ()
    assert report.complete
    assert report.projects_polled == len(seeded.projects) == 40
    assert report.statuses == {"complete": 40}


async def test_a_rejected_key_stops_reconcile(ledger: Ledger, make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(render_seconds=0.05)
    seed(ledger, sandbox, created=3, lost=0)
    with pytest.raises(AuthError):
        await run_reconcile(ledger, sandbox, key="not-the-sandbox-key")


async def test_batches_run_on_a_throwaway_sandbox_are_skipped(
    ledger: Ledger, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox(render_seconds=0.05)
    seed(ledger, sandbox, batch="demo", created=2, lost=1, settings={"endpoint": "sandbox"})
    report = await run_reconcile(ledger, sandbox)
    assert report.batches == ()
    assert [s.name for s in report.skipped] == ["demo"]
    assert report.projects_polled == 0
    assert len(report.in_doubt) == 1  # still listed: still in doubt


async def test_an_endpoint_change_is_warned_about(
    ledger: Ledger, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox(render_seconds=0.05)
    seed(ledger, sandbox, created=1, lost=0, settings={"endpoint": "https://api.example.test"})
    report = await run_reconcile(ledger, sandbox)
    assert report.batches == ("late",)
    assert any("api.example.test" in warning for warning in report.warnings)


async def test_an_unknown_batch_is_an_input_error(
    ledger: Ledger, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox()
    with pytest.raises(ConfigError, match="no batch named 'nope'"):
        await run_reconcile(ledger, sandbox, "nope")
