"""Riding out an API outage: pause, probe with backoff, resume, or give up in time.

    request ──▶ admitted()? ── API up: go at once
                    │
                    └─ API down: wait; one request at a time goes as the probe,
                       after retry.probe_wait() (full-jitter backoff)
    answer (any HTTP status) ──▶ reachable(): the API is up, everyone goes
    ConnectError ──────────────▶ unreachable(): down since the first one; after
                                 `tolerance` seconds down, sending stops

Only a ConnectError (nothing was sent) says the API is down, and only an HTTP
answer says it is up: a lost answer (maybe processed) says neither. A create
that could not connect created nothing, so it is safe to use as a probe; so
is a poll. While renders are only being followed, polls probe, and sending
resumes the moment one is answered.

Beyond the tolerance the run stops sending (STOP_UNREACHABLE, exit 1 with
the unsent count); renders still followed are left `submitted` for `resume`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from batcher.client import retry
from batcher.errors import ConnectError
from batcher.run.state import STOP_UNREACHABLE, RunState
from batcher.settings import DEFAULT_OUTAGE_TOLERANCE

log = logging.getLogger(__name__)


class Outage:
    """Whether the API can be reached, shared by every request of one run."""

    def __init__(
        self,
        state: RunState,
        tolerance: float = DEFAULT_OUTAGE_TOLERANCE,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state = state
        self._tolerance = tolerance
        self._clock = clock
        self._down_since: float | None = None
        self._probes = 0  # probes sent since the outage began
        self._probing = False
        self._given_up = False
        self._changed = anyio.Event()

    @property
    def down(self) -> bool:
        return self._down_since is not None

    @property
    def given_up(self) -> bool:
        """Down for longer than the tolerance: sending has stopped."""
        return self._given_up

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Around one request: at once while the API is up; during an outage, one
        request at a time, as a probe, after a backoff. After giving up, at once
        (the caller sees the run halted, or fails fast and lets go)."""
        probe = await self.admit()
        try:
            yield
        finally:
            if probe:
                self.probe_over()

    async def admit(self) -> bool:
        """`admitted()` without the context manager, for the create path: wait for
        this request's turn; True when it goes as the probe, and then the caller
        calls `probe_over()` once it is answered. A caller that sees the API up
        (not `down`) need not call it at all: it would go at once."""
        while self._down_since is not None and not self._given_up:
            if self._probing:
                await self._changed.wait()
                continue
            self._probing = True
            self._probes += 1
            try:
                await anyio.sleep(retry.probe_wait(self._probes))
            except BaseException:
                self.probe_over()
                raise
            return True
        return False

    def reachable(self) -> None:
        """The API answered (any status): the outage, if any, is over."""
        if self._down_since is None:
            return
        lasted = self._clock() - self._down_since
        self._down_since = None
        self._probes = 0
        log.warning(
            "the API answers again after %.1f s; sending resumes",
            lasted,
            extra={"event": "outage.over", "lasted": round(lasted, 3)},
        )
        self._notify()

    def unreachable(self, exc: ConnectError) -> None:
        """A request could not even connect: the API is down, since now or before."""
        now = self._clock()
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "the API cannot be reached (%s); sending paused, probing it "
                "(gives up after %g s down)",
                exc,
                self._tolerance,
                extra={"event": "outage.began", "error": str(exc)},
            )
            return
        lasted = now - self._down_since
        if lasted >= self._tolerance and not self._given_up:
            self._given_up = True
            self._state.halt(
                STOP_UNREACHABLE,
                f"the API has been unreachable for {lasted:.0f} s "
                f"(--outage-tolerance {self._tolerance:g}): {exc}",
            )
            self._notify()

    def probe_over(self) -> None:
        """The probe `admit()` let through was answered (or gave up)."""
        self._probing = False
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
