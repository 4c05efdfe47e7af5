"""The first signal's grace: how long creates already on the wire may take to answer.

A first SIGINT/SIGTERM stops sending and waits for the creates in flight, so
that their answers are recorded. A server that never answers (one byte every
15 s) must not hold the shutdown: after `grace` seconds the creates still in
flight are cut short and recorded in doubt, as a second signal would, and the
run exits with the first signal's code (130/143).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

log = logging.getLogger(__name__)


async def abort_after(
    grace: float, in_flight: Callable[[], int], abort: Callable[[], None]
) -> None:
    """Sleep `grace` seconds, then `abort()` what is still in flight."""
    await anyio.sleep(grace)
    left = in_flight()
    log.warning(
        "grace of %g s over: %d create(s) still in flight are cut short (now in doubt)",
        grace,
        left,
        extra={"event": "signal.grace_over", "in_flight": left},
    )
    abort()
