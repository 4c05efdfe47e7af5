"""AdaptiveLimiter: AIMD on 429s, pauses, rate cap. A fake clock; no real waiting."""

from __future__ import annotations

import random
import time

import anyio
import anyio.lowlevel
import pytest

from batcher.client import retry
from batcher.client.limits import BACKOFF_INITIAL, RETRY_AFTER_MAX, AdaptiveLimiter
from batcher.errors import ApiError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    """Time that only moves when someone sleeps (one sleeper at a time)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


def limiter(ceiling: int = 8, clock: FakeClock | None = None, **kwargs: object) -> AdaptiveLimiter:
    clock = clock or FakeClock()
    return AdaptiveLimiter(
        ceiling,
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(7),
        **kwargs,  # type: ignore[arg-type]
    )


async def hold(lim: AdaptiveLimiter, n: int) -> None:
    """Take n slots from this task (the fast path never blocks below the limit)."""
    for _ in range(n):
        await lim.slot().__aenter__()


async def free(lim: AdaptiveLimiter, n: int) -> None:
    for _ in range(n):
        await lim.slot().__aexit__(None, None, None)


async def test_starts_at_the_ceiling_and_counts() -> None:
    lim = limiter(8)
    await hold(lim, 3)
    stats = lim.stats()
    assert (stats.ceiling, stats.limit, stats.in_flight, stats.waiting) == (8, 8, 3, 0)
    await free(lim, 3)
    assert lim.in_flight == 0


async def test_a_burst_of_429s_halves_the_limit_once_per_window() -> None:
    clock = FakeClock()
    lim = limiter(64, clock)
    await hold(lim, 64)
    for _ in range(64):  # every request in flight comes back 429
        lim.on_throttle(None)
    assert (lim.limit, lim.cuts, lim.throttles) == (32, 1, 64)
    await free(lim, 64)  # the window of that cut is over
    clock.now += 100
    await hold(lim, 5)
    lim.on_throttle(None)
    lim.on_throttle(None)
    assert (lim.limit, lim.cuts) == (16, 2)
    await free(lim, 5)
    for expected in (8, 4, 2, 1, 1, 1):
        await hold(lim, 1)
        lim.on_throttle(None)
        await free(lim, 1)
        assert lim.limit == expected


async def test_a_throttle_pauses_new_requests_for_retry_after() -> None:
    clock = FakeClock()
    lim = limiter(4, clock)
    lim.on_throttle(2.5)
    assert lim.paused_for() == 2.5
    start = clock.now
    async with lim.slot():
        assert clock.now - start == pytest.approx(2.5)
    assert lim.paused_for() == 0


async def test_retry_after_is_capped_and_later_hints_extend_the_pause() -> None:
    clock = FakeClock()
    lim = limiter(4, clock, retry_after_max=30.0)
    await hold(lim, 2)
    lim.on_throttle(3600)
    assert lim.paused_for() == 30.0
    lim.on_throttle(1)  # same window: no new cut, and a shorter hint does not shorten it
    assert lim.paused_for() == 30.0 and lim.cuts == 1
    await free(lim, 2)


async def test_backoff_without_retry_after_grows_and_resets_on_success() -> None:
    clock = FakeClock()
    lim = limiter(4, clock)
    pauses = []
    for _ in range(4):
        lim.on_throttle(None)  # nothing in flight: every throttle opens a new window
        pauses.append(lim.paused_for())
        clock.now += lim.paused_for()
    for n, pause in enumerate(pauses):
        base = BACKOFF_INITIAL * 2**n
        assert base / 2 <= pause <= base
    lim.on_success()
    lim.on_throttle(None)
    assert BACKOFF_INITIAL / 2 <= lim.paused_for() <= BACKOFF_INITIAL


async def test_successes_grow_the_limit_back_additively_up_to_the_ceiling() -> None:
    lim = limiter(16)
    lim.on_throttle(None)
    lim.on_throttle(None)  # two cuts (no request in flight): 16 -> 8 -> 4
    assert lim.limit == 4
    for _ in range(3):
        lim.on_success()
    assert lim.limit == 4
    lim.on_success()  # 4 successes at limit 4: +1
    assert lim.limit == 5
    for _ in range(5):
        lim.on_success()
    assert lim.limit == 6
    for _ in range(10_000):
        lim.on_success()
    assert lim.limit == 16  # never above the ceiling


async def test_in_flight_never_exceeds_the_limit_and_waiters_resume_in_order() -> None:
    lim = limiter(3)
    peak = 0
    order: list[int] = []

    async def worker(n: int) -> None:
        nonlocal peak
        async with lim.slot():
            order.append(n)
            peak = max(peak, lim.in_flight)
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            lim.on_success()

    async with anyio.create_task_group() as tg:
        for n in range(40):
            tg.start_soon(worker, n)
    assert peak == 3
    assert order == list(range(40))
    assert (lim.in_flight, lim.waiting) == (0, 0)


async def test_after_a_cut_new_requests_wait_until_in_flight_is_below_the_new_limit() -> None:
    lim = limiter(8)
    await hold(lim, 8)
    lim.on_throttle(0)  # 8 -> 4, no pause
    assert lim.limit == 4
    started = anyio.Event()

    async def late() -> None:
        await hold(lim, 1)
        started.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(late)
        for in_flight in (7, 6, 5, 4):  # requests sent under the old limit finish
            await free(lim, 1)
            await anyio.wait_all_tasks_blocked()
            assert not started.is_set(), f"started with {in_flight} in flight, limit 4"
            assert lim.waiting == 1
        await free(lim, 1)  # 3 in flight: below the new limit at last
        await started.wait()
    assert (lim.in_flight, lim.waiting) == (4, 0)
    await free(lim, 4)


async def test_cancelled_waiters_do_not_leak_permits() -> None:
    lim = limiter(2)
    await hold(lim, 2)
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(hold, lim, 1)
        await anyio.wait_all_tasks_blocked()
        assert lim.waiting == 5
        tg.cancel_scope.cancel()
    assert (lim.in_flight, lim.waiting) == (2, 0)
    await free(lim, 2)
    await hold(lim, 2)  # both permits still usable
    assert lim.in_flight == 2
    await free(lim, 2)


async def test_rate_cap_spaces_requests_after_the_burst() -> None:
    clock = FakeClock()
    lim = limiter(100, clock, rate=10.0)  # burst defaults to min(32, rate, ceiling) = 10
    starts = []
    for _ in range(40):
        async with lim.slot():
            starts.append(clock.now - 1000.0)
    assert starts[:10] == pytest.approx([0.0] * 10)
    assert starts[-1] == pytest.approx(3.0)  # 30 more at 10/s
    # At no point more than burst + rate * window requests in any window.
    for i, t0 in enumerate(starts):
        in_one_second = sum(1 for t in starts[i:] if t < t0 + 1.0 - 1e-9)
        assert in_one_second <= 10 + 10


async def test_rate_cap_with_a_burst_of_one_and_pauses_together() -> None:
    clock = FakeClock()
    lim = limiter(4, clock, rate=2.0, burst=1)
    times = []
    for n in range(5):
        if n == 2:
            lim.on_throttle(5.0)
        async with lim.slot():
            times.append(clock.now - 1000.0)
        lim.on_success()
    assert times[0] == 0.0
    assert times[1] == pytest.approx(0.5)
    assert times[2] == pytest.approx(5.5)  # paused 5 s from t=0.5
    assert times[3] == pytest.approx(6.0)
    assert times[4] == pytest.approx(6.5)


async def test_rate_cap_holds_across_concurrent_tasks_in_real_time() -> None:
    # Real time, a short interval, a lower bound only: never flaky on a slow machine.
    lim = AdaptiveLimiter(16, rate=400.0, burst=1)
    started = time.monotonic()

    async def worker() -> None:
        for _ in range(5):
            async with lim.slot():
                pass

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(worker)
    assert time.monotonic() - started >= 39 / 400 * 0.9


@pytest.mark.parametrize(
    ("ceiling", "kwargs"),
    [(0, {}), (4, {"rate": 0.0}), (4, {"rate": -1.0}), (4, {"rate": float("inf")})],
)
def test_bad_settings(ceiling: int, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AdaptiveLimiter(ceiling, **kwargs)  # type: ignore[arg-type]


def test_ceilings_move_with_a_share_of_shared_limits() -> None:
    limiter = AdaptiveLimiter(8, rate=10.0)
    limiter.set_ceilings(4, 5.0)
    assert (limiter.ceiling, limiter.limit, limiter.rate) == (4, 4, 5.0)
    limiter.set_ceilings(8, None)
    assert (limiter.ceiling, limiter.limit, limiter.rate) == (8, 8, None)
    limiter.on_throttle()
    limiter.set_ceilings(16, None)
    assert limiter.limit == 4, "a limit cut by 429s stays cut"


async def test_call_steers_the_limit_by_the_answer() -> None:
    clock = FakeClock()
    lim = limiter(8, clock)

    async def throttled() -> None:
        raise ApiError(429, "slow down", retry_after=3.0)

    async def refused() -> None:
        raise ApiError(503, "unavailable")

    async def answered() -> str:
        assert lim.in_flight == 1  # the request runs inside a slot
        return "ok"

    with pytest.raises(ApiError):
        await lim.call(throttled)
    assert (lim.throttles, lim.limit, lim.in_flight) == (1, 4, 0)
    assert lim.paused_for() == 3.0  # its Retry-After pauses every request
    with pytest.raises(ApiError):
        await lim.call(refused)
    assert (lim.throttles, lim.limit) == (1, 4), "only a 429 is a throttle"
    for _ in range(4):
        assert await lim.call(answered) == "ok"
    assert lim.limit == 5  # +1 per `limit` successes
    assert clock.slept == [3.0]


def test_retry_after_is_capped_as_the_retry_policy_caps_it() -> None:
    assert RETRY_AFTER_MAX == retry.RETRY_AFTER_MAX
