"""The pure parts that carry a run through the night: adaptive timeouts, the
outage gate, the doubt breaker, the stall mark, and the backoffs of retry.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from batcher.client import retry
from batcher.client.latency import FACTOR, AdaptiveTimeout
from batcher.errors import ConnectError
from batcher.ledger import Ledger, LedgerWriter
from batcher.run.breaker import DoubtBreaker
from batcher.run.files import Manifest
from batcher.run.outage import Outage
from batcher.run.stall import progress_mark, watch_stall
from batcher.run.state import STOP_DOUBT, STOP_STALLED, STOP_UNREACHABLE, RunState

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[RunState]:
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        yield RunState(LedgerWriter(ledger), Manifest(tmp_path))


# --------------------------------------------------------------------------- timeouts


def test_a_timeout_never_falls_below_its_floor() -> None:
    timeout = AdaptiveTimeout(20.0, 200.0)
    for _ in range(100):
        timeout.answered(0.05)
    assert timeout.current == 20.0


def test_a_timeout_follows_slow_answers_up_to_its_ceiling() -> None:
    timeout = AdaptiveTimeout(20.0, 200.0)
    for _ in range(10):
        timeout.answered(30.0)
    assert timeout.current == FACTOR * 30.0
    timeout.answered(500.0)
    assert timeout.current == 200.0


def test_timeouts_double_until_an_answer_is_seen() -> None:
    timeout = AdaptiveTimeout(0.3, 3.0)
    seen = []
    for _ in range(5):
        timeout.timed_out()
        seen.append(timeout.current)
    assert seen == [0.6, 1.2, 2.4, 3.0, 3.0]
    timeout.answered(1.0)
    assert timeout.current == pytest.approx(FACTOR * 1.0)


def test_one_slow_answer_among_many_fast_ones_is_ignored() -> None:
    timeout = AdaptiveTimeout(1.0, 100.0)
    for _ in range(63):
        timeout.answered(0.1)
    timeout.answered(50.0)
    assert timeout.current == 1.0, "a high quantile, not the maximum"


# --------------------------------------------------------------------------- backoffs


def test_probes_back_off_to_a_cap_and_never_spin() -> None:
    assert all(retry.PROBE_FLOOR <= retry.probe_wait(n) <= retry.PROBE_MAX for n in range(1, 40))
    with retry.instant():
        assert retry.probe_wait(1) == retry.PROBE_FLOOR > 0


def test_failed_polls_are_looked_at_later_each_time() -> None:
    waits = [retry.poll_again(n) for n in range(1, 10)]
    assert waits[:3] == [5.0, 10.0, 20.0]
    assert waits == sorted(waits) and waits[-1] == retry.POLL_AGAIN_MAX


# --------------------------------------------------------------------------- outage

DOWN = ConnectError("create: could not reach the API")


async def test_an_outage_lets_one_probe_through_at_a_time(state: RunState) -> None:
    outage = Outage(state, tolerance=60)
    outage.unreachable(DOWN)
    inside = 0
    most = 0

    async def request() -> None:
        nonlocal inside, most
        async with outage.admitted():
            inside += 1
            most = max(most, inside)
            await anyio.sleep(0.01)
            inside -= 1
            outage.unreachable(DOWN)

    with retry.instant(), anyio.move_on_after(0.5):
        async with anyio.create_task_group() as tasks:
            for _ in range(5):
                tasks.start_soon(request)
    assert most == 1


async def test_an_answer_ends_the_outage_for_everyone(state: RunState) -> None:
    outage = Outage(state, tolerance=60)
    outage.unreachable(DOWN)
    through = 0

    async def request() -> None:
        nonlocal through
        async with outage.admitted():
            outage.reachable()
            through += 1

    with retry.instant(), anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            for _ in range(5):
                tasks.start_soon(request)
    assert through == 5 and not outage.down and not state.halted()


async def test_an_outage_past_its_tolerance_stops_sending(state: RunState) -> None:
    now = [0.0]
    outage = Outage(state, tolerance=10, clock=lambda: now[0])
    outage.unreachable(DOWN)
    now[0] = 9.9
    outage.unreachable(DOWN)
    assert not state.halted()
    now[0] = 10.0
    outage.unreachable(DOWN)
    assert state.stopped == STOP_UNREACHABLE and outage.given_up
    assert state.stop_detail is not None and "--outage-tolerance 10" in state.stop_detail
    with anyio.fail_after(1):
        async with outage.admitted():
            pass  # given up: nobody waits any more


async def test_an_outage_that_ends_starts_its_clock_again(state: RunState) -> None:
    now = [0.0]
    outage = Outage(state, tolerance=10, clock=lambda: now[0])
    outage.unreachable(DOWN)
    now[0] = 8.0
    outage.reachable()
    outage.unreachable(DOWN)
    now[0] = 16.0
    outage.unreachable(DOWN)
    assert not state.halted(), "two outages of 8 s are not one of 16"


# --------------------------------------------------------------------------- breaker


def test_the_breaker_trips_on_doubts_in_a_row_only(state: RunState) -> None:
    breaker = DoubtBreaker(state, limit=3)
    for _ in range(5):
        breaker.in_doubt("lost")
        breaker.in_doubt("lost")
        breaker.cleared()
    assert not state.halted()
    for _ in range(3):
        breaker.in_doubt("answer not JSON")
    assert state.stopped == STOP_DOUBT
    assert state.stop_detail is not None and "answer not JSON" in state.stop_detail


# --------------------------------------------------------------------------- stall


async def test_the_stall_watch_stops_a_run_that_moves_nothing(state: RunState) -> None:
    with anyio.fail_after(5):
        await watch_stall(state, 0.2)
    assert state.stopped == STOP_STALLED


async def test_progress_keeps_the_stall_watch_quiet(state: RunState) -> None:
    async def progress() -> None:
        for _ in range(15):
            await anyio.sleep(0.02)
            state.counters.created += 1

    before = progress_mark(state.counters)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch_stall, state, 0.2)
        await progress()
        tasks.cancel_scope.cancel()
    assert not state.halted() and progress_mark(state.counters) != before
