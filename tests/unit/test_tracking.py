"""Poll timing and the render gate, as pure logic."""

from __future__ import annotations

import random

import anyio
import pytest

from batcher.run.pacing import FIRST_POLL_S, MAX_STEP_S, PollPlanner, RenderGate


def test_without_samples_polls_like_the_sdk_then_backs_off() -> None:
    planner = PollPlanner()
    assert planner.next_delay(0.0, 0) == pytest.approx(FIRST_POLL_S)
    delays = [planner.next_delay(1.0 + i, i + 1) for i in range(30)]
    assert delays[0] == pytest.approx(0.5)
    assert delays == sorted(delays)
    assert max(delays) <= MAX_STEP_S


def _simulate(planner: PollPlanner, renders: list[float]) -> tuple[float, float]:
    """Average polls per render and average wait between finish and first look."""
    polls = 0
    lag = 0.0
    for duration in renders:
        age, count, last_pending = 0.0, 0, 0.0
        while True:
            age += planner.next_delay(age, count)
            count += 1
            if age >= duration:
                break
            last_pending = age
        planner.observe(age, last_pending)
        polls += count
        lag += age - duration
    return polls / len(renders), lag / len(renders)


def test_learned_schedule_keeps_polls_low_and_finds_renders_quickly() -> None:
    rng = random.Random(7)
    renders = [2.0 * (1 + rng.uniform(-0.2, 0.2)) for _ in range(500)]
    polls, lag = _simulate(PollPlanner(), renders)
    assert polls <= 3.0
    # Renders spread over 0.8 s; finished ones should wait a small part of that.
    assert lag <= 0.2


def test_slow_renders_do_not_cost_many_polls() -> None:
    rng = random.Random(3)
    renders = [rng.uniform(20, 40) for _ in range(200)]
    polls, _ = _simulate(PollPlanner(), renders)
    assert polls <= 4.0


async def test_gate_learns_the_cap_from_a_429_and_waits_for_a_render() -> None:
    gate = RenderGate()
    for _ in range(3):
        await gate.acquire()
        gate.created()
    await gate.acquire()
    assert gate.throttled() is True
    assert gate.cap == 3
    waited = anyio.Event()

    async def next_create() -> None:
        await gate.acquire()
        waited.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(next_create)
        await anyio.wait_all_tasks_blocked()
        assert not waited.is_set()
        gate.finished()
        await waited.wait()


async def test_gate_does_not_explain_a_429_with_nothing_rendering() -> None:
    gate = RenderGate()
    await gate.acquire()
    assert gate.throttled() is False
    assert gate.cap is None


async def test_gate_probes_beyond_the_cap_once_per_generation() -> None:
    def long(age: float) -> float:  # render times learned: every render takes 10 s
        return 1.0 if age >= 10.0 else 0.0

    def floor() -> float:  # and renders were seen still pending at 9 s
        return 9.0

    gate = RenderGate()
    await gate.acquire()
    gate.created(long, floor)
    await gate.acquire()
    gate.throttled()
    assert gate.cap == 1
    # One render finishes and the next create is accepted: that is one generation.
    gate.finished()
    await gate.acquire()
    gate.created(long, floor)
    # Now at the cap with a full generation of successes: one probe is allowed.
    with anyio.fail_after(1):
        await gate.acquire()
    gate.created(long, floor)
    assert gate.cap == 2  # two young renders at once, surely both rendering


async def test_a_probe_accepted_before_render_times_are_known_does_not_grow_the_cap() -> None:
    gate = RenderGate()
    await gate.acquire()
    gate.created()
    await gate.acquire()
    gate.throttled()
    gate.finished()
    await gate.acquire()
    gate.created()
    with anyio.fail_after(1):
        await gate.acquire()
    gate.created()  # the render not seen done may have ended unseen
    assert gate.cap == 1


def test_a_render_done_at_its_first_look_does_not_drag_the_estimate_down() -> None:
    planner = PollPlanner()
    for _ in range(20):
        planner.observe(2.0, 1.8)  # bracketed: finished between 1.8 s and 2.0 s
    before = planner.next_delay(0.0, 0)
    for _ in range(20):
        planner.observe(2.0, None)  # done when first seen at 2.0 s: no lower bound
    after = planner.next_delay(0.0, 0)
    # Taking "no lower bound" as "finished just after the create" would halve it.
    assert after >= 0.85 * before
