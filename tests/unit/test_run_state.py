"""The state the parts of a run share: when it is done, stopped, settled; its manifest."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from batcher.errors import AuthError
from batcher.jobfile.items import ItemSettings
from batcher.ledger import ItemRecord, Ledger, LedgerWriter
from batcher.run.files import Manifest
from batcher.run.manifest_line import ImageFile
from batcher.run.state import STOP_AUTH, STOP_BUDGET, STOP_INTERRUPTED, RunState

pytestmark = pytest.mark.anyio

FULL_DEVICE = Path("/dev/full")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}") as opened:
        yield opened


def make_state(ledger: Ledger, folder: Path) -> RunState:
    return RunState(LedgerWriter(ledger), Manifest(folder))


def item(key: str = "k1") -> ItemRecord:
    return ItemRecord(
        id=1,
        batch_id=1,
        key=key,
        ordinal=0,
        prompt="a prompt",
        settings=ItemSettings("z-image-turbo", "1k", "1:1", "general", 1),
        project_name=f"b {key}",
        estimate=5,
        estimate_exact=True,
        state="pending",
        failure=None,
        attempts=0,
        render_failures=0,
        project_id=None,
        credits_reserved=0,
        error_status=None,
        error_message=None,
        files=(),
        source_path=None,
        source_line=None,
    )


def done(state: RunState) -> bool:
    """Whether `wait_done()` would return at once (the event it waits for is set)."""
    return state._done.is_set()


async def test_done_once_feeding_ends_and_nothing_is_held(ledger: Ledger, tmp_path: Path) -> None:
    state = make_state(ledger, tmp_path)
    state.hold(2)
    state.settle()
    state.feeding_done()
    assert not done(state), "one item is still held"
    state.settle()
    assert done(state)
    await state.wait_done()


async def test_nothing_held_is_not_done_while_the_feeder_feeds(
    ledger: Ledger, tmp_path: Path
) -> None:
    state = make_state(ledger, tmp_path)
    state.hold()
    state.settle()
    assert not done(state)


async def test_halt_keeps_the_first_reason_and_wakes_budget_waiters(
    ledger: Ledger, tmp_path: Path
) -> None:
    state = make_state(ledger, tmp_path)
    woken: list[bool] = []

    async def waiter() -> None:
        await state.wait_settled()
        woken.append(True)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        state.halt(STOP_BUDGET, "no room")
        state.halt(STOP_INTERRUPTED, "later")
    assert woken == [True]
    assert state.halted()
    assert (state.stopped, state.stop_detail) == (STOP_BUDGET, "no room")
    assert not done(state), "a halt stops sending, renders are still followed"


async def test_notify_settled_wakes_each_waiter_once(ledger: Ledger, tmp_path: Path) -> None:
    state = make_state(ledger, tmp_path)
    woken = 0

    async def waiter() -> None:
        nonlocal woken
        await state.wait_settled()
        woken += 1

    async with anyio.create_task_group() as tasks:
        for _ in range(3):
            tasks.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        state.notify_settled()
    assert woken == 3
    with anyio.move_on_after(0.05) as scope:
        await state.wait_settled()
    assert scope.cancelled_caught, "the next waiter waits for the next settle"


async def test_interrupt_and_fail_end_the_run(ledger: Ledger, tmp_path: Path) -> None:
    interrupted = make_state(ledger, tmp_path)
    interrupted.hold(5)
    interrupted.interrupt()
    assert done(interrupted) and interrupted.stopped == STOP_INTERRUPTED

    failed = make_state(ledger, tmp_path)
    failed.hold(5)
    error = AuthError(401, "bad key")
    failed.fail(error)
    assert done(failed) and failed.stopped == STOP_AUTH
    assert isinstance(failed.fatal, AuthError) and failed.fatal.status == 401
    assert "bad key" in str(failed.fatal) and "MAGIC_HOUR_API_KEY" in str(failed.fatal)


async def test_manifest_lines_carry_what_the_item_was(ledger: Ledger, tmp_path: Path) -> None:
    state = make_state(ledger, tmp_path)
    saved = ImageFile("a.png", "ab" * 32, 7, 3, 2)
    state.write_manifest(item(), "complete", project_id="p1", charged=5, files=(saved,))
    state.close()
    [line] = (tmp_path / "manifest.jsonl").read_text().splitlines()
    entry = json.loads(line)
    assert entry["key"] == "k1"
    assert (entry["project_id"], entry["state"], entry["credits_charged"]) == ("p1", "complete", 5)
    assert [f["path"] for f in entry["files"]] == ["a.png"]
    assert entry["files"][0] == {
        "path": "a.png",
        "sha256": "ab" * 32,
        "bytes": 7,
        "width": 3,
        "height": 2,
    }
    # DESIGN.md's fields beside today's.
    settings = item().settings
    assert (entry["aspect_ratio"], entry["tool"]) == (settings.aspect_ratio, settings.tool)
    assert entry["vars"] == {} and entry["credits_refunded"] == 0
    assert entry["finished_at"] is not None


@pytest.mark.skipif(not FULL_DEVICE.exists(), reason="no /dev/full here")
async def test_a_manifest_that_cannot_be_written_is_warned_about_once(
    ledger: Ledger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = make_state(ledger, tmp_path)
    state._manifest.path = FULL_DEVICE  # every write fails as on a full disk
    caplog.set_level(logging.WARNING, logger="batcher.run.state")
    for key in ("a", "b", "c"):
        state.write_manifest(item(key), "complete")  # never raises
    state.close()
    [record] = caplog.records
    assert "No space left on device" in record.getMessage()
    assert record.__dict__["event"] == "manifest.failed"
