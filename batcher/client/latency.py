"""Read timeouts that follow the latency the API shows.

A fixed read timeout is wrong both ways: an API that answers every request
after 30 s never gets a 20 s poll through (and is polled forever), while a
generous timeout on a healthy API hides a dead connection for minutes. So
each kind of call (creates, polls) keeps the durations of its recent answers
and sets its timeout to FACTOR times a high quantile of them, bounded by a
floor (the configured timeout: never shorter) and a ceiling.

A timeout is an answer we did not see: the next one waits twice as long (up
to the ceiling) until an answer is seen again, so the timeout can climb past
a latency it has never observed. Pure bookkeeping: no I/O, no clock of its own.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Final

WINDOW: Final = 64  # recent answers remembered per kind of call
QUANTILE: Final = 0.95
FACTOR: Final = 3.0  # the timeout is this many times the quantile


class AdaptiveTimeout:
    """The read timeout of one kind of call, between `floor` and `ceiling` seconds."""

    def __init__(self, floor: float, ceiling: float) -> None:
        if not 0 < floor <= ceiling:
            raise ValueError(f"need 0 < floor <= ceiling, not {floor} and {ceiling}")
        self._floor = floor
        self._ceiling = ceiling
        self._recent: deque[float] = deque()  # oldest first, at most WINDOW
        self._ordered: list[float] = []  # the same durations, sorted
        self._from_answers = floor
        self._stretched = 0.0  # after timeouts: at least this, until an answer is seen
        self.current = floor

    @property
    def floor(self) -> float:
        return self._floor

    @property
    def ceiling(self) -> float:
        return self._ceiling

    def answered(self, seconds: float) -> None:
        """An answer came back after `seconds`."""
        # Kept sorted as answers come and go, not sorted again for each answer.
        recent, ordered = self._recent, self._ordered
        if len(recent) == WINDOW:
            del ordered[bisect.bisect_left(ordered, recent.popleft())]
        recent.append(seconds)
        bisect.insort(ordered, seconds)
        high = ordered[min(len(ordered) - 1, int(QUANTILE * len(ordered)))]
        self._from_answers = FACTOR * high
        self._stretched = 0.0
        self._update()

    def timed_out(self) -> None:
        """A call gave up waiting after `current` seconds."""
        self._stretched = min(self._ceiling, max(self._stretched, self.current) * 2.0)
        self._update()

    def _update(self) -> None:
        wanted = max(self._from_answers, self._stretched)
        self.current = min(self._ceiling, max(self._floor, wanted))
