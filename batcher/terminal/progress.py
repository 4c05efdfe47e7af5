"""Showing a run while it goes and when it ends (on stderr, through batcher.terminal.console).

On a terminal: a Rich progress bar with items done, failed and in doubt,
images, credits, rate and ETA. Elsewhere (cron, CI, `--quiet`): a plain log
line every few seconds. The runner only keeps counters; this module reads them.
"""

from __future__ import annotations

import logging
import math

import anyio
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from batcher.run.batch_run import RunCounters
from batcher.terminal import console as output

log = logging.getLogger("batcher.terminal.progress")

LIVE_REFRESH_S = 0.25
PLAIN_EVERY_S = 10.0


def finished_count(counters: RunCounters, *, wait: bool) -> int:
    done = counters.complete + counters.failed + counters.unconfirmed
    return done if wait else counters.created + counters.failed + counters.unconfirmed


def describe(counters: RunCounters, *, wait: bool) -> str:
    rate = counters.created / counters.elapsed if counters.elapsed > 0 else 0.0
    parts = [
        f"{counters.complete} complete" if wait else f"{counters.created} submitted",
        f"{counters.failed} failed",
        f"{counters.unconfirmed} in doubt",
    ]
    if wait:
        parts.append(f"{counters.rendering} rendering")
    parts += [
        f"{counters.images} images",
        f"{counters.credits_charged - counters.credits_refunded} credits",
        f"{rate:.1f} creates/s",
    ]
    if counters.throttled:
        parts.append(f"{counters.throttled}x 429")
    return " · ".join(parts)


class RunDisplay:
    def __init__(
        self, batch: str, *, wait: bool, live: bool, plain_every_s: float = PLAIN_EVERY_S
    ) -> None:
        self.batch = batch
        self.wait = wait
        self.live = live
        self.plain_every_s = plain_every_s
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    async def follow(self, counters: RunCounters, todo: int) -> None:
        """Refresh until cancelled. `todo`: items this run is expected to settle."""
        if self.live:
            await self._follow_live(counters, todo)
        else:
            await self._follow_plain(counters, todo)

    async def _follow_live(self, counters: RunCounters, todo: int) -> None:
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=output.stderr,
            transient=False,
        )
        self._progress = progress
        self._task = progress.add_task(self.batch, total=max(todo, 0), detail="")
        with progress:
            try:
                while True:
                    self._refresh(counters)
                    await anyio.sleep(LIVE_REFRESH_S)
            finally:
                self._refresh(counters)

    def _refresh(self, counters: RunCounters) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                completed=finished_count(counters, wait=self.wait),
                detail=describe(counters, wait=self.wait),
            )

    async def _follow_plain(self, counters: RunCounters, todo: int) -> None:
        while True:
            await anyio.sleep(self.plain_every_s)
            done = finished_count(counters, wait=self.wait)
            rate = done / counters.elapsed if counters.elapsed > 0 else 0.0
            eta = (todo - done) / rate if rate > 0 and todo > done else math.nan
            eta_text = f", ETA {eta:.0f}s" if math.isfinite(eta) else ""
            log.info(
                "%s: %d/%d · %s%s",
                self.batch,
                done,
                todo,
                describe(counters, wait=self.wait),
                eta_text,
            )
