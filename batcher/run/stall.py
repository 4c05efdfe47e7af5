"""The stall watch: a run that moves nothing forward for too long stops.

Progress is an item moving on: a create answered (accepted, refused or in
doubt), a render finished, an image saved, a refund seen. Polls and retries
are not progress: an API that takes every request and answers none (or
answers only "still rendering" forever) would otherwise keep a nightly job
alive, and paying, until morning. After `timeout` seconds without progress
the run says so at WARNING, stops (STOP_STALLED, exit 1), and leaves every
open item as it is for `resume`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

import anyio

from batcher.run.state import STOP_STALLED, RunCounters, RunState

log = logging.getLogger(__name__)

LOOKS_PER_TIMEOUT: Final = 10  # how often progress is looked at, per timeout
LOOK_MAX_S: Final = 5.0


def progress_mark(counters: RunCounters) -> tuple[int, ...]:
    """What changes when, and only when, the run moves an item forward."""
    return (
        counters.created,
        counters.complete,
        counters.failed,
        counters.unconfirmed,
        counters.images,
        counters.credits_refunded,
    )


async def watch_stall(
    state: RunState, limit: float, *, clock: Callable[[], float] = time.monotonic
) -> None:
    """Until cancelled (or the run is stopped): stop the run after `limit`
    seconds without progress."""
    look = min(LOOK_MAX_S, limit / LOOKS_PER_TIMEOUT)
    mark = progress_mark(state.counters)
    since = clock()
    while True:
        await anyio.sleep(look)
        now = clock()
        current = progress_mark(state.counters)
        if current != mark:
            mark, since = current, now
            continue
        if now - since >= limit:
            detail = (
                f"no progress for {now - since:.0f} s (--stall-timeout {limit:g}): "
                "no create answered, no render finished"
            )
            log.warning("run stalled: %s", detail, extra={"event": "run.stalled"})
            state.stop(STOP_STALLED, detail)
            return
