"""Adaptive concurrency and a request-rate cap, in front of every API call.

The API publishes no limit, so the runner finds it (DESIGN.md): every request
goes through `async with limiter.slot():`, which waits for

1. any throttle pause to end (after a 429: its Retry-After, else a backoff
   that grows with consecutive throttles),
2. a permit: fewer requests in flight than the current limit,
3. a rate token when a rate cap is set,

then `on_success()` / `on_throttle(retry_after)` steer the limit (`call()` does
all of it around one request that raises ApiError on a 429): additive
increase (+1 per `limit` successes, up to the ceiling), multiplicative
decrease (times DECREASE_FACTOR, never below 1) at most once per window, where a
window holds every request started before the cut: a 429 answering a request
that started before the last cut is part of that cut (callers pass the
request's ticket from `acquire`; `call()` does it). A burst of 429s from
requests sent under the old limit is one signal, not sixty-four.

A 429 is also a rate limit: the first 429 of a window sets a request-rate
cap at RATE_BACKOFF times the rate requests were started at in the last
RATE_WINDOW_S, which then grows by RATE_GROWTH each time that many requests
succeed, up to `--rate` (when given). A Retry-After longer than
RETRY_AFTER_MAX is capped, with a warning; every pause is remembered for a
while, so that the poll planner can refuse to learn render times from a
poll that a pause delayed (`paused_between`).

`--concurrency` and `--rate` are ceilings: the limit starts at the ceiling and
only ever goes down from there, and back up to it.

It runs on every request (2,000/s and more), so the fast path takes no lock,
creates no task and no event, and all bookkeeping is O(1): waiting requests
queue in a deque and are handed permits in order; the rate cap reserves send
times (GCRA, a token bucket without a refill task) so waiters never race.
Clock, sleep and randomness are injectable for deterministic tests.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Final, TypeVar

import anyio

from batcher.client import retry
from batcher.errors import ApiError

log = logging.getLogger(__name__)

T = TypeVar("T")

DECREASE_FACTOR: Final = 0.5  # multiplicative decrease on a throttle
BACKOFF_INITIAL: Final = 1.0  # seconds: pause after a first 429 without Retry-After
BACKOFF_MAX: Final = 60.0  # the pause stops growing here
# Longer Retry-After values are capped to this: the retry policy's cap, one for all.
RETRY_AFTER_MAX: Final = retry.RETRY_AFTER_MAX
# With a rate cap, up to this many requests may go at once after a quiet spell
# (the token bucket's depth), never more than the concurrency ceiling.
BURST_MAX: Final = 32.0
# The rate learned at a 429: this share of the rate requests were started at.
RATE_BACKOFF: Final = 0.8
RATE_WINDOW_S: Final = 2.0
RATE_GROWTH: Final = 1.1
RATE_MIN: Final = 1.0  # requests per second: a learned rate never goes below
RATE_MIN_STARTS: Final = 8  # requests in the window needed to learn a rate from
PAUSES_KEPT: Final = 64
_EPSILON: Final = 1e-9  # float error in the schedule; not worth a trip through the event loop


@dataclass(frozen=True, slots=True)
class LimiterStats:
    """A snapshot for progress displays and benchmarks."""

    ceiling: int
    limit: int
    in_flight: int
    waiting: int
    throttles: int  # 429s reported
    cuts: int  # times the limit was cut (at most one per window)
    paused_for: float  # seconds until new requests may start again; 0 when not paused
    rate: float | None


class _Waiter:
    """One request waiting for a permit: granted by `_wake`, or abandoned on cancel."""

    __slots__ = ("abandoned", "event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False
        self.abandoned = False


class _Slot:
    """The context manager `slot()` returns; stateless, so one instance serves all."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: AdaptiveLimiter) -> None:
        self._limiter = limiter

    async def __aenter__(self) -> None:
        await self._limiter._enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._limiter._release()


class AdaptiveLimiter:
    """Concurrency limit that adapts to 429s (AIMD), plus an optional rate cap.

    `ceiling`: the most requests in flight (`--concurrency`); `rate`: the most
    requests started per second (`--rate`), None for no cap; `burst`: how many
    may start back to back under the rate cap (default min(BURST_MAX, rate,
    ceiling), at least 1).
    """

    def __init__(
        self,
        ceiling: int,
        *,
        rate: float | None = None,
        burst: float | None = None,
        decrease_factor: float = DECREASE_FACTOR,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        retry_after_max: float = RETRY_AFTER_MAX,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if ceiling < 1:
            raise ValueError("ceiling must be at least 1")
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError("rate must be a positive number of requests per second")
        if not 0 < decrease_factor < 1:
            raise ValueError("decrease_factor must be between 0 and 1")
        self._ceiling = ceiling
        self._limit = ceiling
        self._in_flight = 0
        self._waiters: deque[_Waiter] = deque()
        self._waiting = 0
        self._successes = 0  # since the last increase or cut
        self._throttles = 0
        self._cuts = 0
        self._consecutive = 0  # cuts since the last success: grows the backoff
        self._window_left = 0  # completions still owed to the window of the last cut
        self._paused_until = -math.inf
        self._decrease = decrease_factor
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._retry_after_max = retry_after_max
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        # Rate cap as GCRA: `_tat` is the theoretical arrival time of the next
        # request; one may start when now >= _tat - _tolerance.
        self._rate = rate
        if rate is not None:
            depth = burst if burst is not None else min(BURST_MAX, rate, float(ceiling))
            depth = max(1.0, depth)
            self._interval = 1.0 / rate
            self._tolerance = (depth - 1.0) * self._interval
        else:
            self._interval = 0.0
            self._tolerance = 0.0
        self._tat = -math.inf
        self._slot = _Slot(self)
        self._rate_ceiling = rate  # --rate; a learned rate stays under it
        self._learned_rate: float | None = None
        self._rate_successes = 0
        self._starts: deque[float] = deque()  # start times within RATE_WINDOW_S
        self._tickets = 0  # requests started; a request's ticket is its number
        self._cut_ticket = 0  # the last ticket issued before the last cut
        self._pauses: deque[tuple[float, float]] = deque(maxlen=PAUSES_KEPT)

    # ----------------------------------------------------------------- counters

    @property
    def ceiling(self) -> int:
        return self._ceiling

    @property
    def limit(self) -> int:
        """Requests allowed in flight now (1..ceiling)."""
        return self._limit

    @property
    def in_flight(self) -> int:
        """Requests holding a permit (sending, or about to after a rate token)."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Requests queued for a permit."""
        return self._waiting

    @property
    def throttles(self) -> int:
        return self._throttles

    @property
    def cuts(self) -> int:
        return self._cuts

    @property
    def rate(self) -> float | None:
        return self._rate

    def paused_for(self) -> float:
        """Seconds until new requests may start; 0 when not paused."""
        return max(0.0, self._paused_until - self._clock())

    def stats(self) -> LimiterStats:
        return LimiterStats(
            ceiling=self._ceiling,
            limit=self._limit,
            in_flight=self._in_flight,
            waiting=self._waiting,
            throttles=self._throttles,
            cuts=self._cuts,
            paused_for=self.paused_for(),
            rate=self._rate,
        )

    @property
    def learned_rate(self) -> float | None:
        """The request rate learned from 429s (None: none learned)."""
        return self._learned_rate

    def paused_between(self, start: float, end: float) -> float:
        """Seconds of throttle pauses within [start, end] (the clock's time)."""
        total = 0.0
        for began, ended in self._pauses:
            total += max(0.0, min(end, ended) - max(start, began))
        return total

    def set_ceilings(self, ceiling: int, rate: float | None) -> None:
        """Move the ceilings while running: a worker's share of a batch's shared
        limits changes as workers join and leave. A limit that was at its old
        ceiling follows the new one; one cut by 429s stays cut."""
        ceiling = max(1, ceiling)
        if ceiling != self._ceiling:
            at_ceiling = self._limit >= self._ceiling
            self._ceiling = ceiling
            self._limit = ceiling if at_ceiling else min(self._limit, ceiling)
            self._wake()
        if rate != self._rate_ceiling:
            if rate is not None and not (rate > 0 and math.isfinite(rate)):
                raise ValueError("rate must be a positive number of requests per second")
            self._rate_ceiling = rate
            learned = self._learned_rate
            self._set_rate(rate if learned is None else _lower(learned, rate))

    def _set_rate(self, rate: float | None) -> None:
        self._rate = rate
        if rate is None:
            self._interval = 0.0
            self._tolerance = 0.0
        else:
            depth = max(1.0, min(BURST_MAX, rate, float(self._ceiling)))
            if self._learned_rate is not None:
                depth = 1.0  # a rate found by 429s has no room for bursts
            self._interval = 1.0 / rate
            self._tolerance = (depth - 1.0) * self._interval

    # ----------------------------------------------------------------- use

    def slot(self) -> _Slot:
        """`async with limiter.slot():` around one request."""
        return self._slot

    async def acquire(self) -> int:
        """Take a slot without a context manager (pair with `release`), for callers
        that must do work between taking it and the request. Returns the request's
        ticket, for `on_throttle`."""
        return await self._enter()

    def release(self) -> None:
        self._release()

    async def call(self, request: Callable[[], Awaitable[T]]) -> T:
        """Make one request in a slot: a 429 (ApiError) cuts the limit and pauses
        every request, a success grows the limit back."""
        ticket = await self._enter()
        try:
            answer = await request()
        except ApiError as exc:
            if exc.status == retry.THROTTLED:
                self.on_throttle(exc.retry_after, ticket=ticket)
            raise
        finally:
            self._release()
        self.on_success()
        return answer

    async def ready(self) -> None:
        """Wait out any throttle pause, taking nothing: a caller that must prepare
        before `acquire` (write an intent) does not prepare during a pause."""
        await self._wait_pause()

    def on_success(self) -> None:
        """A request succeeded: reset the backoff, grow the limit by 1 per `limit` successes."""
        self._consecutive = 0
        if self._learned_rate is not None:
            self._rate_successes += 1
            if self._rate_successes >= max(1.0, self._learned_rate):
                self._grow_rate()
        if self._limit >= self._ceiling:
            return
        self._successes += 1
        if self._successes >= self._limit:
            self._successes = 0
            self._limit += 1
            self._wake()

    def on_throttle(self, retry_after: float | None = None, *, ticket: int | None = None) -> None:
        """A request got 429: cut the limit and learn a request rate (once per
        window), and pause new requests.

        `ticket` (from `acquire`) tells a request started before the last cut,
        whose 429 belongs to that cut. The pause lasts `retry_after` seconds
        (capped at `retry_after_max`, with a warning) when the server said;
        else an exponential backoff with jitter that doubles with each
        consecutive cut and resets on the next success.
        """
        self._throttles += 1
        now = self._clock()
        if ticket is not None:
            new_window = ticket > self._cut_ticket
        else:
            new_window = self._window_left <= 0
        if new_window:
            self._cut_ticket = self._tickets
            self._learn_rate(now)
            self._cuts += 1
            self._consecutive += 1
            before = self._limit
            self._limit = max(1, math.floor(self._limit * self._decrease))
            self._successes = 0
            # Every request in flight now was sent under the old limit; their
            # 429s belong to this cut.
            self._window_left = self._in_flight
        if retry_after is not None and math.isfinite(retry_after):
            delay = min(max(0.0, retry_after), self._retry_after_max)
            if retry_after > self._retry_after_max and new_window:
                log.warning(
                    "the API asked to wait %.0f s (Retry-After); waiting %.0f s instead",
                    retry_after,
                    self._retry_after_max,
                    extra={
                        "event": "limiter.retry_after_capped",
                        "retry_after": retry_after,
                        "pause": self._retry_after_max,
                    },
                )
        elif new_window:
            base = min(self._backoff_max, self._backoff_initial * 2.0 ** (self._consecutive - 1))
            # "Equal jitter": at least half the base, so a pause is a pause, and
            # random above that so that several workers do not resume together.
            delay = base / 2 + self._rng.uniform(0.0, base / 2)
        else:
            delay = 0.0
        if now + delay > self._paused_until:
            self._paused_until = now + delay
            self._pauses.append((now, now + delay))
        if new_window:
            log.info(
                "throttled: limit %d -> %d, pausing %.2fs",
                before,
                self._limit,
                delay,
                extra={
                    "event": "limiter.cut",
                    "limit": self._limit,
                    "previous_limit": before,
                    "pause": round(delay, 3),
                    "retry_after": retry_after,
                    "throttles": self._throttles,
                },
            )

    def _learn_rate(self, now: float) -> None:
        """A 429 opened a window: requests were started too fast. Cap the rate at a
        share of what it was (never above a cap already in force)."""
        starts = self._starts
        while starts and starts[0] < now - RATE_WINDOW_S:
            starts.popleft()
        if len(starts) < RATE_MIN_STARTS:
            return  # too few requests to tell a rate: the pause alone will do
        observed = len(starts) / RATE_WINDOW_S
        learned = max(RATE_MIN, observed * RATE_BACKOFF)
        if self._rate is not None:
            learned = min(learned, self._rate)
        self._learned_rate = _lower(learned, self._rate_ceiling)
        self._rate_successes = 0
        self._tat = -math.inf
        self._set_rate(self._learned_rate)

    def _grow_rate(self) -> None:
        """A learned rate's worth of successes in a row: try a little faster."""
        assert self._learned_rate is not None
        self._rate_successes = 0
        grown = self._learned_rate * RATE_GROWTH
        if self._rate_ceiling is not None and grown >= self._rate_ceiling:
            self._learned_rate = None  # back at --rate
            self._set_rate(self._rate_ceiling)
            return
        self._learned_rate = grown
        self._set_rate(grown)

    # ----------------------------------------------------------------- internals

    async def _enter(self) -> int:
        await self._wait_pause()
        await self._take_permit()
        try:
            if self._rate is not None:
                await self._take_token()
            # A throttle may have come in while we queued for the permit or the
            # token: requests that had not started yet honour its pause too.
            await self._wait_pause()
        except BaseException:
            self._release()
            raise
        self._tickets += 1
        now = self._clock()
        starts = self._starts
        starts.append(now)
        if starts[0] < now - RATE_WINDOW_S:
            starts.popleft()
        return self._tickets

    async def _wait_pause(self) -> None:
        # A loop: the pause may be extended while we sleep.
        while True:
            delay = self._paused_until - self._clock()
            if delay <= 0:
                return
            await self._sleep(delay)

    async def _take_permit(self) -> None:
        if self._in_flight < self._limit and not self._waiting:
            self._in_flight += 1
            return
        waiter = _Waiter()
        self._waiters.append(waiter)
        self._waiting += 1
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                # Cancelled just as the permit came: pass it on.
                self._release()
            else:
                waiter.abandoned = True  # `_wake` drops it when it reaches the front
                self._waiting -= 1
            raise

    async def _take_token(self) -> None:
        # GCRA: reserve the next send time, then sleep until it. Each caller
        # reserves its own time, so waiters neither race nor poll.
        now = self._clock()
        tat = self._tat if self._tat > now else now
        allowed_at = tat - self._tolerance
        self._tat = tat + self._interval
        if allowed_at - now > _EPSILON:
            await self._sleep(allowed_at - now)

    def _release(self) -> None:
        self._in_flight -= 1
        if self._window_left > 0:
            self._window_left -= 1
        self._wake()

    def _wake(self) -> None:
        """Hand free permits to waiters, first come first served."""
        waiters = self._waiters
        while waiters and self._in_flight < self._limit:
            waiter = waiters.popleft()
            if waiter.abandoned:
                continue
            waiter.granted = True
            self._waiting -= 1
            self._in_flight += 1
            waiter.event.set()


def _lower(rate: float, ceiling: float | None) -> float:
    return rate if ceiling is None else min(rate, ceiling)
