"""Following renders: when to poll, and how many renders the account may run at once.

Both are learned while the batch runs rather than assumed, since the API
publishes neither its render times nor its limits.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import anyio

# Before any render has been seen finishing: the SDK's cadence, slightly relaxed.
FIRST_POLL_S = 1.0
EARLY_STEP_S = 0.5
# However long renders take, look at least this often and at most this rarely.
MIN_STEP_S = 0.05
MAX_STEP_S = 10.0
BACKOFF = 1.5
SAMPLES = 128
MIN_SAMPLES = 4
# Poll at these quantiles of the learned render time, then back off. Four
# looks spread over the likely window keep the average near 2.5 polls per
# item while a finished render waits about an eighth of that window.
QUANTILES = (0.25, 0.5, 0.75, 0.95)
# With the webhook receiver on, polls only catch an event that was lost: the
# first a minute after the create, then at gaps growing by half each time.
FALLBACK_FIRST_S = 60.0
FALLBACK_GROWTH = 1.5
FALLBACK_MAX_S = 600.0


def fallback_delay(age: float, polls: int) -> float:
    """Seconds until the next fallback poll of a render `age` s old, polled `polls` times."""
    if polls == 0:
        return max(0.0, FALLBACK_FIRST_S - age)
    return min(FALLBACK_MAX_S, FALLBACK_FIRST_S * FALLBACK_GROWTH**polls)


def _quantile(ordered: list[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class PollPlanner:
    """Chooses when to poll a render from the render times seen so far."""

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=SAMPLES)
        self._schedule: tuple[float, ...] | None = None
        self._spread = EARLY_STEP_S

    @property
    def samples(self) -> int:
        """Render times learned so far."""
        return len(self._samples)

    def observe(self, not_after: float, not_before: float | None) -> None:
        """A render finished after `not_before` s (None: it was done at its first
        look) and by `not_after` s from its create."""
        if not_before is None:
            # No earlier look: assume it finished within one step before this one,
            # not at any time since its create, which would drag every estimate down.
            not_before = not_after - self._step()
        low = max(0.0, min(not_before, not_after))
        self._samples.append((low + not_after) / 2)
        self._schedule = None

    def _step(self) -> float:
        """The typical gap between planned looks."""
        schedule = self._poll_ages()
        if len(schedule) < 2:
            return EARLY_STEP_S
        return (schedule[-1] - schedule[0]) / (len(schedule) - 1)

    def _poll_ages(self) -> tuple[float, ...]:
        if self._schedule is None:
            if len(self._samples) < MIN_SAMPLES:
                self._schedule = ()
            else:
                ordered = sorted(self._samples)
                ages = [max(MIN_STEP_S, _quantile(ordered, q)) for q in QUANTILES]
                self._spread = max(MIN_STEP_S, (ages[-1] - ages[0]) / 2)
                self._schedule = tuple(sorted(set(ages)))
        return self._schedule

    def next_delay(self, age: float, polls: int) -> float:
        """Seconds from now until the next poll of a render created `age` s ago."""
        schedule = self._poll_ages()
        if not schedule:
            if polls == 0:
                return max(0.0, FIRST_POLL_S - age)
            return min(MAX_STEP_S, EARLY_STEP_S * BACKOFF ** max(0, polls - 3))
        for planned in schedule:
            if planned > age + MIN_STEP_S / 2:
                return planned - age
        late = max(0, polls - len(schedule))
        return min(MAX_STEP_S, self._spread * BACKOFF**late)


@dataclass
class _GateState:
    cap: int | None = None
    outstanding: int = 0  # renders created and not yet seen finished
    sending: int = 0  # creates in flight
    successes: int = 0  # creates accepted since the cap last moved


class RenderGate:
    """Learns the account's cap on renders in flight from 429s on creates.

    A 429 while renders are outstanding sets the cap to what is outstanding;
    creates then wait for a render to finish. Once per `cap` accepted creates
    one more is tried beyond it, so a cap that was set too low (or a limit
    that grew) is found again. Under a plain request-rate limit this still
    behaves: by Little's law a cap on renders in flight is a cap on the
    create rate, at the rate the 429 was seen.
    """

    def __init__(self) -> None:
        self._state = _GateState()
        self._room = anyio.Event()

    @property
    def cap(self) -> int | None:
        return self._state.cap

    @property
    def outstanding(self) -> int:
        return self._state.outstanding

    def _has_room(self) -> bool:
        s = self._state
        if s.cap is None:
            return True
        in_use = s.outstanding + s.sending
        probe = s.successes >= s.cap and s.sending == 0
        return in_use < s.cap or probe

    async def acquire(self) -> None:
        """Wait until one more create may be sent, and hold a place for it."""
        while not self._has_room():
            room = self._room
            await room.wait()
        self._state.sending += 1

    def created(self) -> None:
        s = self._state
        s.sending -= 1
        s.outstanding += 1
        s.successes += 1
        if s.cap is not None and s.outstanding > s.cap:
            s.cap = s.outstanding
            s.successes = 0

    def throttled(self) -> bool:
        """A create got 429. Returns True when the gate explains it (renders are
        outstanding), so callers need not also slow every other request down."""
        s = self._state
        s.sending -= 1
        self._wake()
        if s.outstanding == 0:
            return False
        s.cap = max(1, s.outstanding)
        s.successes = 0
        return True

    def not_created(self) -> None:
        """A create ended without a project (refused, lost, stopped)."""
        self._state.sending -= 1
        self._wake()

    def finished(self, count: int = 1) -> None:
        """Renders were seen finishing (or given up on): their places are free."""
        self._state.outstanding = max(0, self._state.outstanding - count)
        self._wake()

    def adopt(self, count: int) -> None:
        """Renders created earlier (a resumed batch) that now count as outstanding."""
        self._state.outstanding += count

    def _wake(self) -> None:
        self._room.set()
        self._room = anyio.Event()
