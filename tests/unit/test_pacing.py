"""Pacing as pure logic: the render gate's rate-limit / render-cap distinction and
its estimate of places probably free, render times per kind, the limiter's
windows by ticket, its learned rate, the Retry-After cap and its memory of
pauses (issue 15 and issue 10, point 10)."""

from __future__ import annotations

import logging
import random

import anyio
import pytest

from batcher.client.limits import RETRY_AFTER_MAX, AdaptiveLimiter
from batcher.run.pacing import (
    FALLBACK_FIRST_S,
    MIN_SAMPLES,
    SAMPLE_EVERY,
    Planners,
    PollPlanner,
    RenderGate,
    fallback_delay,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def limiter(ceiling: int, clock: Clock, **kwargs: object) -> AdaptiveLimiter:
    return AdaptiveLimiter(
        ceiling,
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(1),
        **kwargs,  # type: ignore[arg-type]
    )


def step_at(seconds: float) -> object:
    """A render-time distribution where every render takes `seconds`."""
    return lambda age: 1.0 if age >= seconds else 0.0


async def fill(
    gate: RenderGate, count: int, done_share: object = None, busy_floor: object = None
) -> list[int]:
    tokens = []
    for _ in range(count):
        await gate.acquire()
        tokens.append(gate.created(done_share, busy_floor))  # type: ignore[arg-type]
    return tokens


def seen_pending_until(seconds: float) -> object:
    """Renders of a kind seen still pending as late as `seconds` after their create."""
    return lambda: seconds


async def at_cap(
    count: int, done_share: object, busy_floor: object = None
) -> tuple[Clock, RenderGate]:
    """A gate on a fake clock whose cap was just learned at `count` renders."""
    clock = Clock()
    gate = RenderGate(clock=clock)
    await fill(gate, count, done_share, busy_floor)
    await gate.acquire()
    assert gate.throttled() is True
    assert gate.cap == count
    return clock, gate


# --------------------------------------------------------------------------- the gate


async def test_a_429_with_fewer_renders_than_the_cap_is_a_rate_limit() -> None:
    gate = RenderGate()
    tokens = await fill(gate, 4)
    await gate.acquire()
    assert gate.throttled() is True  # four in flight, nothing known: the render cap
    assert gate.cap == 4
    gate.finished(tokens[0])
    gate.finished(tokens[1])
    await gate.acquire()
    assert gate.throttled() is False  # two in flight under a cap of four: a rate limit
    assert gate.cap == 4  # the cap is not lowered by it


async def test_a_429_with_nothing_in_flight_is_a_rate_limit() -> None:
    gate = RenderGate()
    await gate.acquire()
    assert gate.throttled() is False
    assert gate.cap is None


async def test_renders_probably_done_free_their_places_without_a_poll() -> None:
    clock = Clock()
    gate = RenderGate(clock=clock)
    await fill(gate, 3, step_at(2.0))
    await gate.acquire()
    assert gate.throttled() is True
    assert gate.cap == 3
    with anyio.move_on_after(0.2) as blocked:
        await gate.acquire()
    assert blocked.cancelled_caught  # all three still rendering
    clock.now += 2.0  # every render is past its learned time
    with anyio.fail_after(1):
        await gate.acquire()  # no finished() needed
    assert gate.outstanding == 3  # none seen done yet: the follower still polls them


async def test_a_refused_create_waits_for_more_to_be_expected_done() -> None:
    clock = Clock()
    gate = RenderGate(clock=clock)
    shares = {"done": 0.0}
    await fill(gate, 4, lambda age: shares["done"])
    await gate.acquire()
    gate.throttled()  # cap 4
    shares["done"] = 0.5  # two of four probably done: room
    clock.now += 0.01
    await gate.acquire()
    assert gate.throttled() is True  # but the server says no: at the cap still
    with anyio.move_on_after(0.2) as blocked:
        await gate.acquire()
    assert blocked.cancelled_caught  # the estimate did not move since the refusal
    shares["done"] = 0.7
    clock.now += 0.01
    with anyio.fail_after(1):
        await gate.acquire()


def uniform(low: float, high: float) -> object:
    """Render times spread evenly between `low` and `high` seconds."""
    return lambda age: min(1.0, max(0.0, (age - low) / (high - low)))


async def test_a_refusal_restarts_the_expectation_from_every_render_busy() -> None:
    clock, gate = await at_cap(2, uniform(1.0, 3.0))
    clock.now += 2.0  # each render half likely done: a place expected free
    assert gate.expected_free() == pytest.approx(1.0)
    await gate.acquire()
    assert gate.throttled() is True  # but both were still rendering
    assert gate.expected_free() == pytest.approx(0.0)  # known busy as of now
    clock.now += 0.5  # each had at most 1.0 s left; half of that has passed
    assert gate.expected_free() == pytest.approx(1.0)


async def test_an_accepted_create_past_the_cap_proves_one_render_ended() -> None:
    clock, gate = await at_cap(2, uniform(1.0, 3.0))
    clock.now += 1.5
    first_free = gate.expected_free()
    await gate.acquire()
    gate.created(uniform(1.0, 3.0))  # type: ignore[arg-type]
    # Three not seen done, but only two can be rendering: the oldest, likeliest
    # ended, stops counting, and the new one is surely busy.
    assert gate.outstanding == 3
    assert gate.expected_free() == pytest.approx(first_free / 2)


async def test_places_are_judged_where_a_create_will_arrive() -> None:
    clock, gate = await at_cap(2, step_at(2.0))
    clock.now += 1.8
    assert gate.expected_free() == 0.0
    gate.set_lead(0.3)  # a create sent now reaches renders 2.1 s old
    assert gate.expected_free() == 2.0


async def test_a_create_in_flight_holds_only_its_chance_of_a_place() -> None:
    clock, gate = await at_cap(2, uniform(1.0, 3.0))
    clock.now += 1.5  # a quarter of each render likely done: half a place
    await gate.acquire()  # a probe, still on its way
    assert gate.expected_free() == pytest.approx(0.0)  # it holds the half it hoped for
    clock.now += 0.5  # another half a place expected: a second probe may go
    assert gate.expected_free() == pytest.approx(0.5)
    with anyio.fail_after(1):
        await gate.acquire()
    gate.throttled()  # the first came back refused: its share is given back
    gate.not_created()
    assert gate.expected_free() == pytest.approx(0.0)  # known busy as of now


async def test_a_render_older_than_every_render_time_ends_soon_after() -> None:
    clock, gate = await at_cap(1, step_at(2.0))
    clock.now += 2.5
    await gate.acquire()
    assert gate.throttled() is True  # still busy past its learned time
    assert gate.expected_free() == 0.0
    clock.now += 0.25  # OVERDUE_S later: most likely ended
    assert 0.5 < gate.expected_free() < 1.0


async def test_adopted_renders_count_as_in_flight_until_seen_done() -> None:
    gate = RenderGate()
    tokens = gate.adopt(3)
    await gate.acquire()
    assert gate.throttled() is True  # three adopted, of unknown age: the cap
    assert gate.cap == 3
    with anyio.move_on_after(0.2) as blocked:
        await gate.acquire()
    assert blocked.cancelled_caught
    gate.finished(tokens[0])
    with anyio.fail_after(1):
        await gate.acquire()


async def test_the_cap_grows_when_more_are_surely_rendering() -> None:
    clock = Clock()
    gate = RenderGate(clock=clock)
    await fill(gate, 2, step_at(10.0), seen_pending_until(9.0))
    await gate.acquire()
    gate.throttled()
    assert gate.cap == 2
    for _ in range(2):  # a generation of successes: one seen done, one more sent
        gate.finished()
        await fill(gate, 1, step_at(10.0), seen_pending_until(9.0))
    with anyio.fail_after(1):  # then one probe beyond the cap
        await gate.acquire()
    gate.created(step_at(10.0), seen_pending_until(9.0))  # type: ignore[arg-type]
    assert gate.cap == 3  # three young renders at once: the cap is at least that


async def test_the_cap_does_not_grow_on_render_times_never_seen_from_below() -> None:
    clock = Clock()
    gate = RenderGate(clock=clock)
    # Every render done at its first look (10 s): that says only "at most 10 s".
    await fill(gate, 2, step_at(10.0), seen_pending_until(None))  # type: ignore[arg-type]
    await gate.acquire()
    gate.throttled()
    for _ in range(2):
        gate.finished()
        await fill(gate, 1, step_at(10.0), seen_pending_until(None))  # type: ignore[arg-type]
    with anyio.fail_after(1):
        await gate.acquire()
    gate.created(step_at(10.0), seen_pending_until(None))  # type: ignore[arg-type]
    assert gate.cap == 2  # the probe's place may have been freed by a render ended unseen


# --------------------------------------------------------------------------- planners


def test_the_last_renders_are_looked_at_across_the_spread_of_render_times() -> None:
    planner = PollPlanner()
    assert planner.closing_delay(0.2) == pytest.approx(0.8)  # nothing learned: the first look
    for seconds in (4.0, 4.5, 5.0, 5.5, 6.0):
        planner.observe(seconds, seconds)
    assert planner.closing_delay(0.5) == pytest.approx(4.5)  # not before the median
    step = planner.closing_delay(5.1)
    assert step == pytest.approx((5.9 - 4.1) / 20)  # a twentieth of the spread
    assert planner.closing_delay(30.0) == step  # and no backing off


def test_done_share_follows_the_render_times_learned() -> None:
    planner = PollPlanner()
    assert planner.done_share(100.0) == 0.0  # nothing learned: everything busy
    for seconds in (1.0, 2.0, 3.0, 4.0):
        planner.observe(seconds, seconds)
    assert planner.done_share(0.5) == 0.0
    assert planner.done_share(2.5) == pytest.approx(0.5)
    assert planner.done_share(5.0) == 1.0


def test_a_render_not_sampled_is_looked_at_once_when_likely_done() -> None:
    planner = PollPlanner()
    rng = random.Random(5)
    for _ in range(64):
        seconds = rng.uniform(1.6, 2.4)
        planner.observe(seconds, seconds)
    first = planner.sparse_delay(0.0, 0)
    assert 2.2 <= first <= 2.4  # near the 90th percentile
    later = [planner.sparse_delay(first + i, i + 1) for i in range(5)]
    assert later == sorted(later)
    assert later[0] < 0.2  # a late render is looked at again soon


def test_render_times_are_kept_per_kind_and_a_few_of_each_are_sampled() -> None:
    planners = Planners()
    fast, slow = ("z-image-turbo", "1k"), ("seedream", "4k")
    assert all(planners.sample_next(fast) for _ in range(3))  # nothing known: sample all
    for _ in range(MIN_SAMPLES):
        planners.observe(fast, 1.0, 1.0)
        planners.observe(slow, 30.0, 30.0)
    assert planners.of(fast).sparse_delay(0.0, 0) == pytest.approx(1.0)
    assert planners.of(slow).sparse_delay(0.0, 0) == pytest.approx(30.0)
    sampled = [planners.sample_next(fast) for _ in range(SAMPLE_EVERY * 4)]
    assert sum(sampled) == 4
    other = ("flux", "1k")  # a kind with no times of its own uses all of them
    assert planners.of(other) is planners.overall


def test_with_webhooks_polls_are_a_fallback_at_widening_gaps() -> None:
    assert fallback_delay(0.0, 0) == FALLBACK_FIRST_S
    assert fallback_delay(10.0, 0) == FALLBACK_FIRST_S - 10.0
    gaps = [fallback_delay(0.0, n) for n in range(1, 6)]
    assert gaps == sorted(gaps)
    assert gaps[0] > FALLBACK_FIRST_S


# --------------------------------------------------------------------------- the limiter


async def test_the_concurrency_halves_once_for_429s_of_requests_sent_before_the_cut() -> None:
    clock = Clock()
    lim = limiter(8, clock)
    tickets = [await lim.acquire() for _ in range(8)]
    for _ in tickets:
        lim.release()  # every answer is in before any 429 is reported (the sender's order)
    for ticket in tickets:
        lim.on_throttle(None, ticket=ticket)
    assert (lim.limit, lim.cuts) == (4, 1)
    await lim.ready()
    later = await lim.acquire()  # sent after the cut: its 429 is news
    lim.release()
    lim.on_throttle(None, ticket=later)
    assert (lim.limit, lim.cuts) == (2, 2)


async def test_a_huge_retry_after_is_capped_and_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    lim = limiter(8, clock)
    ticket = await lim.acquire()
    lim.release()
    with caplog.at_level(logging.WARNING, logger="batcher.client.limits"):
        lim.on_throttle(999_999.0, ticket=ticket)
    assert lim.paused_for() == pytest.approx(RETRY_AFTER_MAX)
    assert any("999999" in record.getMessage() for record in caplog.records)
    start = clock.now
    await lim.ready()
    assert clock.now - start == pytest.approx(RETRY_AFTER_MAX)


async def test_pauses_are_remembered_so_no_render_time_is_learned_from_one() -> None:
    clock = Clock()
    lim = limiter(8, clock)
    ticket = await lim.acquire()
    lim.release()
    lim.on_throttle(30.0, ticket=ticket)  # paused from 1000 to 1030
    assert lim.paused_between(990.0, 1010.0) == pytest.approx(10.0)
    assert lim.paused_between(1031.0, 1040.0) == 0.0


async def test_a_rate_limit_slows_the_request_rate_then_it_grows_back() -> None:
    clock = Clock()
    lim = limiter(64, clock, rate=100.0)
    tickets = []
    for _ in range(40):  # 40 requests in 0.4 s: 20/s over the two-second window
        tickets.append(await lim.acquire())
        lim.release()
        clock.now += 0.01
    lim.on_throttle(None, ticket=tickets[-1])
    assert lim.learned_rate == pytest.approx(40 / 2.0 * 0.8)
    assert lim.rate == pytest.approx(16.0)
    for _ in range(200):
        await lim.call(_answer)
    assert lim.rate is not None and lim.rate > 16.0  # successes let it grow again


async def _answer() -> str:
    return "ok"


def test_the_busy_floor_is_the_youngest_age_seen_pending() -> None:
    planner = PollPlanner()
    for _ in range(MIN_SAMPLES):
        planner.observe(1.0, None)  # done at the first look: no lower bound
    assert planner.busy_floor() is None
    for pending in (0.6, 0.5, 0.7, 0.8):
        planner.observe(1.0, pending)
    assert planner.busy_floor() == 0.5
