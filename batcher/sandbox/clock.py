"""Where the sandbox's time comes from.

The emulator reads two clocks: monotonic seconds for durations (renders,
the rate limit, webhook backoff) and wall seconds for timestamps (created_at,
URL expiry, webhook signatures). `SystemClock` is the real one; `ManualClock`
moves only when a test says so, so a test can step past a render's end, a
URL's expiry or a webhook's backoff without sleeping.

A running server must also *notice* that a manual clock moved (its webhook
scheduler sleeps until the next thing is due), so `ManualClock` calls its
listeners after every `advance`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

Listener = Callable[[], None]


class Clock(Protocol):
    """Monotonic for durations, wall for timestamps and URL expiry."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class ManualClock:
    """A clock that stands still until `advance` is called; safe across threads.

    Both readings move together: `wall()` is always `epoch + monotonic()`.
    """

    def __init__(self, *, start: float = 1000.0, epoch: float = 1_767_225_600.0) -> None:
        self._now = start
        self._epoch = epoch  # 2026-01-01T00:00:00Z, so timestamps are easy to read
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def monotonic(self) -> float:
        return self._now  # one attribute read: atomic, no lock needed

    def wall(self) -> float:
        return self._epoch + self._now

    def advance(self, seconds: float) -> None:
        """Move both readings forward, then tell every listener."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += seconds
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` after each advance; returns the function that stops it."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe
