"""Following renders: when to poll, and how many renders the account may run at once.

Both are learned while the batch runs rather than assumed, since the API
publishes neither its render times nor its limits.

- PollPlanner: render times of one kind (model and resolution). A few renders
  of each kind are sampled (looked at several times around the likely end),
  which keeps the learned distribution honest; the others are looked at once,
  when a render is very likely done. `Planners` keeps one per kind.
- RenderGate: the account's cap on renders in flight. Renders end unseen
  between polls, so the gate expects them to from the learned render times,
  starting again from "all busy" at each render-cap 429, and lets a create go
  at the moment it foresees room where the create will arrive; a 429 then
  only says "not yet". A 429 while fewer renders are in flight than the cap
  is a rate limit, not the cap (the caller slows the request rate instead).
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import anyio

log = logging.getLogger(__name__)

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
# Renders not sampled are looked at once, when this share of renders is done;
# one render in SAMPLE_EVERY of each kind is sampled (polled at QUANTILES),
# so that what is learned is not skewed by looking late.
SPARSE_QUANTILE = 0.9
SAMPLE_EVERY = 6
# The last renders of a run are looked at this many times across the spread of
# render times, at most: the last one seen done ends the run.
CLOSING_LOOKS = 20
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
        # Ages at which renders were seen still pending, for those later seen done:
        # true lower bounds on their render times (midpoints are only estimates).
        self._pending_ages: deque[float] = deque(maxlen=SAMPLES)
        self._schedule: tuple[float, ...] | None = None
        self._sorted: list[float] | None = None
        self._spread = EARLY_STEP_S

    @property
    def samples(self) -> int:
        """Render times learned so far."""
        return len(self._samples)

    def observe(self, not_after: float, not_before: float | None) -> None:
        """A render finished after `not_before` s (None: it was done at its first
        look) and by `not_after` s from its create."""
        if not_before is not None and not_before < not_after:
            self._pending_ages.append(not_before)
        if not_before is None:
            # No earlier look: assume it finished within one step before this one,
            # not at any time since its create, which would drag every estimate down.
            not_before = not_after - self._step()
        low = max(0.0, min(not_before, not_after))
        self._samples.append((low + not_after) / 2)
        self._schedule = None
        self._sorted = None

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

    def busy_floor(self) -> float | None:
        """An age below which a render of this kind is surely still busy: the
        youngest age at which a render later seen done was still pending, once
        enough such looks are known (renders all done at their first look say
        only how long they took at most)."""
        if len(self._pending_ages) < MIN_SAMPLES:
            return None
        return min(self._pending_ages)

    def done_share(self, age: float) -> float:
        """The share of renders done by `age` s after their create, from the render
        times learned (0 until enough are known: every render counts as busy)."""
        if len(self._samples) < MIN_SAMPLES:
            return 0.0
        ordered = self._ordered()
        if age < ordered[0]:
            return 0.0
        if age >= ordered[-1]:
            return 1.0
        return bisect.bisect_right(ordered, age) / len(ordered)

    def _ordered(self) -> list[float]:
        if self._sorted is None:
            self._sorted = sorted(self._samples)
        return self._sorted

    def sparse_delay(self, age: float, polls: int) -> float:
        """Seconds until the next poll of a render that is not being sampled: once
        when it is very likely done (SPARSE_QUANTILE), then at short, growing
        steps. Without enough samples, the sampling schedule (`next_delay`)."""
        if len(self._samples) < MIN_SAMPLES:
            return self.next_delay(age, polls)
        ordered = self._ordered()
        likely = max(MIN_STEP_S, _quantile(ordered, SPARSE_QUANTILE))
        if polls == 0 and likely > age:
            return likely - age
        late_step = max(MIN_STEP_S, (ordered[-1] - _quantile(ordered, 0.5)) / 5)
        late = max(0, polls - 1)
        return min(MAX_STEP_S, late_step * BACKOFF**late)

    def closing_delay(self, age: float) -> float:
        """Seconds until the next look at one of a run's last renders: from the
        median render time on, every twentieth of the spread of render times
        (without enough samples, the sampling schedule's early steps)."""
        if len(self._samples) < MIN_SAMPLES:
            return EARLY_STEP_S if age >= FIRST_POLL_S else FIRST_POLL_S - age
        ordered = self._ordered()
        median = _quantile(ordered, 0.5)
        if age < median:
            return median - age
        spread = _quantile(ordered, 0.95) - _quantile(ordered, 0.05)
        return max(MIN_STEP_S, spread / CLOSING_LOOKS)

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


Kind = Hashable


class Planners:
    """A PollPlanner per kind of render (model, resolution), and one over all: a
    kind with too few render times of its own is planned from all of them."""

    def __init__(self, overall: PollPlanner | None = None) -> None:
        self.overall = overall or PollPlanner()
        self._kinds: dict[Kind, PollPlanner] = {}
        self._created: dict[Kind, int] = {}

    def of(self, kind: Kind) -> PollPlanner:
        own = self._kinds.get(kind)
        if own is not None and own.samples >= MIN_SAMPLES:
            return own
        return self.overall

    def observe(self, kind: Kind, not_after: float, not_before: float | None) -> None:
        self._kinds.setdefault(kind, PollPlanner()).observe(not_after, not_before)
        self.overall.observe(not_after, not_before)

    def sample_next(self, kind: Kind) -> bool:
        """Whether the next render of this kind is sampled: all of them until the
        kind's render times are known, then one in SAMPLE_EVERY."""
        count = self._created.get(kind, 0)
        self._created[kind] = count + 1
        own = self._kinds.get(kind)
        if own is None or own.samples < MIN_SAMPLES:
            return True
        return count % SAMPLE_EVERY == 0


DoneShare = Callable[[float], float]
BusyFloor = Callable[[], float | None]


@dataclass(slots=True)
class _Tracked:
    created_at: float | None  # None: adopted, its age unknown (busy until seen done)
    done_share: DoneShare | None
    busy_floor: BusyFloor | None = None
    # Counted against the cap: believed still rendering. An accepted create past
    # the cap proves one counted render had ended; the likeliest stops counting.
    counted: bool = True
    # When it was last known rendering (its create, or a render-cap 429 since),
    # and the share of renders of its kind done by its age then.
    busy_at: float = 0.0
    done_then: float = 0.0


@dataclass
class _GateState:
    cap: int | None = None
    floor: int = 0  # the most renders seen accepted at once, all surely still busy
    sending: int = 0  # creates in flight
    # The places those creates are expected to take: each its chance of being
    # accepted (the places expected free when it went, at most one), so that
    # one probe on a slow link does not hold back the next for a round trip.
    sending_places: float = 0.0
    successes: int = 0  # creates accepted since the cap last moved
    burst_left: int = 0  # creates in flight when the cap was first set: they refine it
    renders: dict[int, _Tracked] = field(default_factory=dict)  # created, not seen done


# A create goes when this many places are expected free where it arrives. Each
# refused create says every counted render was still busy, so the expectation
# restarts from there; lower sends sooner into more 429s (bench/pacing.py).
ROOM = 0.4
# A render still busy past every render time learned ends, as far as we can
# tell, at this rate (once per this many seconds).
OVERDUE_S = 0.25
# Which counted render an accepted create past the cap proves ended, when its
# age is unknown (adopted): about as likely as not.
ADOPTED_DONE = 0.5
# A render is surely still busy while this many times its age is below every
# render time learned.
SURE_MARGIN = 1.5
# The longest a waiting create sleeps before it looks again without news.
LOOK_AGAIN_S = 0.5
ROOM_PRECISION_S = 0.002


class RenderGate:
    """Learns the account's cap on renders in flight from 429s on creates, and
    lets a create go when a place is probably free.

    A 429 on a create is the render cap when as many renders as the cap may be
    in flight; the cap is then what is probably busy (never below `floor`,
    the most renders seen accepted at once while all were surely busy). A 429
    while fewer renders than the cap can be in flight, or with none, is a rate
    limit: `throttled()` returns False and the caller slows the request rate.

    Places free as renders end, which is seen only by a poll; in between, the
    gate expects them from the render times learned. A render-cap 429 says
    every counted render was still busy then, so the expectation starts again
    from there (each render's chance of having ended since); an accepted create
    past the cap says one had ended. A create goes when ROOM of a place is
    expected free where it will arrive, at the moment that is foreseen rather
    than at the next of a fixed tick. Once per `cap` accepted creates one more
    is tried beyond the cap, so a cap that was set too low (or a limit that
    grew) is found. Renders adopted from an earlier run count as busy until
    seen done.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._state = _GateState()
        self._room = anyio.Event()
        self._clock = clock
        self._tokens = 0
        self._lead = 0.0  # seconds a create takes there and back
        self._timer_taken = False  # a waiter looks again on a timer for the others
        self._waiting = 0  # creates waiting in acquire()

    @property
    def cap(self) -> int | None:
        return self._state.cap

    @property
    def outstanding(self) -> int:
        """Renders created and not yet seen done."""
        return len(self._state.renders)

    @property
    def quiet(self) -> bool:
        """No create is waiting here or on its way."""
        return self._state.sending == 0 and self._waiting == 0

    def set_lead(self, seconds: float) -> None:
        """A create's round trip. A render's age where a create sent now arrives is
        its age here plus that, however the trip splits between the two ways,
        since its start was seen here one way after it happened."""
        self._lead = max(0.0, seconds)

    def expected_free(self, at: float | None = None) -> float:
        """Places expected free where a create sent at `at` (now) arrives: the cap
        less the counted renders and the places the creates in flight are
        expected to take, plus each counted render's chance of having ended
        since it was last known busy."""
        s = self._state
        if s.cap is None:
            return math.inf
        now = (self._clock() if at is None else at) + self._lead
        free = s.cap - s.sending_places
        for render in s.renders.values():
            if render.counted:
                free -= 1.0 - self._ended(render, now)
        return free

    @staticmethod
    def _ended(render: _Tracked, now: float) -> float:
        """The chance that a render last known busy at `busy_at` has ended by `now`."""
        if render.created_at is None or render.done_share is None:
            return 0.0
        then = render.done_then
        if then >= 1.0:  # older than every render time learned, and still busy
            return 1.0 - math.exp(-max(0.0, now - render.busy_at) / OVERDUE_S)
        share = render.done_share(now - render.created_at)
        return max(0.0, (share - then) / (1.0 - then))

    def _surely_busy(self) -> int:
        """Renders younger than any render time learned; before render times are
        known, every render created here and not seen done."""
        now = self._clock()
        surely = 0
        for render in self._state.renders.values():
            if render.created_at is None:
                continue  # adopted: who knows
            share = render.done_share
            age = now - render.created_at
            # With a margin: learned times are midpoints of the looks around each end.
            if share is None or share(math.inf) < 1.0 or share(age * SURE_MARGIN) == 0.0:
                surely += 1
        return surely

    def _proven_busy(self) -> int:
        """Renders younger than the youngest age at which a render of their kind
        was seen still pending: what a cap may grow on. Learned render times
        are not enough: renders done at their first look teach only an upper
        bound, which for renders shorter than the first look is far too long."""
        now = self._clock()
        proven = 0
        for render in self._state.renders.values():
            if render.created_at is None or render.busy_floor is None:
                continue
            floor = render.busy_floor()
            if floor is not None and (now - render.created_at) * SURE_MARGIN < floor:
                proven += 1
        return proven

    def _has_room(self) -> bool:
        s = self._state
        if s.cap is None:
            return True
        probe = s.successes >= s.cap and s.sending == 0
        return probe or self.expected_free() >= ROOM

    def _room_in(self) -> float | None:
        """Seconds until ROOM of a place is expected free, if that comes within
        LOOK_AGAIN_S as time passes alone; None if it does not."""
        now = self._clock()
        if self.expected_free(now + LOOK_AGAIN_S) < ROOM:
            return None
        low, high = 0.0, LOOK_AGAIN_S
        while high - low > ROOM_PRECISION_S:
            middle = (low + high) / 2
            if self.expected_free(now + middle) >= ROOM:
                high = middle
            else:
                low = middle
        return high

    def _estimates_move(self) -> bool:
        return any(
            render.counted and render.done_share is not None and render.created_at is not None
            for render in self._state.renders.values()
        )

    async def acquire(self) -> None:
        """Wait until one more create may be sent, and hold a place for it.

        While places free as time passes (renders probably done), one waiter
        sleeps until the moment room is foreseen and the others wait for it: a
        hundred waiting senders cost one timer, not a hundred."""
        owner = False
        self._waiting += 1
        try:
            while not self._has_room():
                room = self._room
                if owner or (self._estimates_move() and not self._timer_taken):
                    owner = self._timer_taken = True
                    due = self._room_in()
                    with anyio.move_on_after(LOOK_AGAIN_S if due is None else due):
                        await room.wait()
                else:
                    await room.wait()
        finally:
            self._waiting -= 1
            if owner:
                self._timer_taken = False
                self._wake()  # another waiter takes the timer, or the room left
        s = self._state
        s.sending_places += 1.0 if s.cap is None else min(1.0, max(0.0, self.expected_free()))
        s.sending += 1

    def _answered(self) -> None:
        """A create in flight came back: it no longer holds a share of a place."""
        s = self._state
        s.sending_places = 0.0 if s.sending <= 1 else s.sending_places * (s.sending - 1) / s.sending
        s.sending -= 1

    def created(
        self, done_share: DoneShare | None = None, busy_floor: BusyFloor | None = None
    ) -> int:
        """A create was accepted; returns the token its `finished` gives back.
        `done_share(age)`: the share of renders of its kind done by that age;
        `busy_floor()`: an age below which they are surely still busy (None:
        not known)."""
        s = self._state
        now = self._clock()
        self._answered()
        s.successes += 1
        self._tokens += 1
        s.renders[self._tokens] = _Tracked(now, done_share, busy_floor, busy_at=now)
        if s.burst_left > 0 and s.cap is not None:
            # Sent in the burst whose 429 set the cap, and accepted: the cap is at
            # least what is in flight now (that 429 may have been the rate limit).
            s.burst_left -= 1
            if len(s.renders) > s.cap:
                self._cap_moved(len(s.renders), "accepted in the burst that set it")
        s.floor = max(s.floor, self._surely_busy())
        # A cap grows only on renders proven busy: one not seen done may have
        # ended unseen.
        surely = self._proven_busy()
        if s.cap is not None and surely > s.cap:
            self._cap_moved(surely, "more are surely rendering")  # it grew
            s.successes = 0
        if s.cap is not None:
            self._uncount_ended(now)
        return self._tokens

    def _uncount_ended(self, now: float) -> None:
        """The server took a create, so no more than the cap are rendering: the
        counted renders likeliest to have ended stop counting."""
        s = self._state
        assert s.cap is not None
        counted = [r for r in s.renders.values() if r.counted]
        extra = len(counted) - s.cap
        if extra <= 0:
            return
        at = now + self._lead

        def ended(render: _Tracked) -> float:
            return ADOPTED_DONE if render.created_at is None else self._ended(render, at)

        for render in sorted(counted, key=ended, reverse=True)[:extra]:
            render.counted = False

    def throttled(self) -> bool:
        """A create got 429. True when it is the render cap (the gate paces the next
        creates); False when it is a rate limit, for the caller to slow down."""
        s = self._state
        self._answered()
        s.burst_left = max(0, s.burst_left - 1)
        self._wake()
        possibly = len(s.renders) + s.sending
        if possibly == 0 or (s.cap is not None and possibly < s.cap):
            return False  # fewer in flight than the cap: not the cap
        if s.cap is None:
            # What is probably rendering now; a known cap is never lowered from
            # estimates (an optimistic one would shrink it for nothing).
            probably = math.floor(self._probably_busy())
            self._cap_moved(max(1, s.floor, min(len(s.renders), probably)), "429")
            s.burst_left = s.sending
        s.successes = 0
        self._refused()
        return True

    def _probably_busy(self) -> float:
        """Renders probably still busy now, by the render times learned, plus a
        place's worth of doubt (the cap is set from this before it is known)."""
        now = self._clock() + self._lead
        busy = 0.0
        for render in self._state.renders.values():
            if render.created_at is None or render.done_share is None:
                busy += 1.0
            else:
                busy += 1.0 - render.done_share(now - render.created_at)
        return busy + 0.8

    def _refused(self) -> None:
        """At the cap: at least `cap` less the creates in flight of the renders
        not seen done were busy just now. They count again (the likeliest busy
        first, if some had stopped counting), and are known busy as of now."""
        s = self._state
        assert s.cap is not None
        now = self._clock()
        counted = [r for r in s.renders.values() if r.counted]
        missing = s.cap - s.sending - len(counted)
        if missing > 0:
            at = now + self._lead
            others = [r for r in s.renders.values() if not r.counted]
            others.sort(key=lambda r: ADOPTED_DONE if r.created_at is None else self._ended(r, at))
            for render in others[:missing]:
                render.counted = True
        for render in s.renders.values():
            if render.counted and render.created_at is not None and render.done_share:
                render.busy_at = now
                render.done_then = render.done_share(now - render.created_at)

    def _cap_moved(self, cap: int, why: str) -> None:
        log.debug(
            "render cap %s -> %d (%s)",
            self._state.cap,
            cap,
            why,
            extra={"event": "gate.cap", "cap": cap, "previous_cap": self._state.cap},
        )
        self._state.cap = cap

    def not_created(self) -> None:
        """A create ended without a project (refused, lost, stopped)."""
        self._answered()
        self._state.burst_left = max(0, self._state.burst_left - 1)
        self._wake()

    def finished(self, token: int | None = None) -> None:
        """A render was seen done (or given up on): its place is free. Without a
        token, the oldest render goes (callers that do not keep tokens)."""
        renders = self._state.renders
        if token is None:
            if renders:
                del renders[next(iter(renders))]
        else:
            renders.pop(token, None)
        self._wake()

    def adopt(self, count: int) -> list[int]:
        """Renders created earlier (a resumed batch): busy until seen done."""
        tokens = []
        for _ in range(count):
            self._tokens += 1
            self._state.renders[self._tokens] = _Tracked(None, None)
            tokens.append(self._tokens)
        return tokens

    def _wake(self) -> None:
        self._room.set()
        self._room = anyio.Event()
