"""Showing a run while it goes (on stderr, through batcher.terminal.console).

On a terminal: a Rich progress bar that fits 80 columns, with the counts on a
second line. Elsewhere (cron, CI, a pipe): a plain log line every
`--progress-interval` seconds (30 by default) and one at the end, with
done/total, the states, credits, rate and ETA, and no escape codes. The runner
only keeps counters; this module reads them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import anyio
from rich.console import RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from batcher.run.batch_run import RunCounters
from batcher.terminal import console as output

log = logging.getLogger("batcher.terminal.progress")

LIVE_REFRESH_S = 0.25
DEFAULT_PROGRESS_INTERVAL_S = 30.0
# The live display's widest line: an 80-column terminal shows it whole.
LIVE_WIDTH = 80
NAME_WIDTH = 16
BAR_WIDTH = 24


def finished_count(counters: RunCounters, *, wait: bool) -> int:
    done = counters.complete + counters.failed + counters.unconfirmed
    return done if wait else counters.created + counters.failed + counters.unconfirmed


def describe(counters: RunCounters, *, wait: bool) -> str:
    rate = counters.created / counters.elapsed if counters.elapsed > 0 else 0.0
    parts = [
        f"{counters.complete:,} complete" if wait else f"{counters.created:,} submitted",
        f"{counters.failed:,} failed",
        f"{counters.unconfirmed:,} in doubt",
    ]
    if wait:
        parts.append(f"{counters.rendering:,} rendering")
    parts += [
        f"{counters.images:,} images",
        f"{counters.credits_charged - counters.credits_refunded:,} credits",
        f"{rate:.1f} creates/s",
    ]
    if counters.throttled:
        parts.append(f"{counters.throttled:,}x 429")
    return " · ".join(parts)


def compact(counters: RunCounters, *, wait: bool) -> str:
    """The live display's second line: short enough for 80 columns, zeros left out."""
    parts = [f"{counters.complete:,} done" if wait else f"{counters.created:,} sent"]
    if counters.failed:
        parts.append(f"{counters.failed:,} failed")
    if counters.unconfirmed:
        parts.append(f"{counters.unconfirmed:,} in doubt")
    if wait and counters.rendering:
        parts.append(f"{counters.rendering:,} rendering")
    parts.append(f"{counters.images:,} img")
    parts.append(f"{counters.credits_charged - counters.credits_refunded:,} credits")
    rate = counters.created / counters.elapsed if counters.elapsed > 0 else 0.0
    parts.append(f"{rate:.1f}/s")
    if counters.throttled:
        parts.append(f"{counters.throttled:,}x429")
    return " · ".join(parts)[:LIVE_WIDTH]


def plain_line(batch: str, counters: RunCounters, todo: int, *, wait: bool) -> str:
    """One progress line for a log: `BATCH: done/total (pct) · states · credits · rate · ETA`."""
    done = min(finished_count(counters, wait=wait), todo) if todo else 0
    elapsed = counters.elapsed
    rate = done / elapsed if elapsed > 0 else 0.0
    percent = 100 * done // todo if todo else 100
    if done >= todo:
        eta = "ETA 0s"
    elif rate > 0 and math.isfinite(rate):
        eta = f"ETA {(todo - done) / rate:,.0f}s"
    else:
        eta = "ETA unknown"
    return (
        f"{batch}: {done:,}/{todo:,} ({percent}%) · {describe(counters, wait=wait)}"
        f" · {rate:.2f} items/s · {eta}"
    )


class _BarWithCounts(Progress):
    """The bar on one line, the counts on the next: each fits 80 columns."""

    detail: str = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        yield Text(self.detail, no_wrap=True, overflow="ellipsis")


class RunDisplay:
    def __init__(
        self,
        batch: str,
        *,
        wait: bool,
        live: bool,
        plain_every_s: float = DEFAULT_PROGRESS_INTERVAL_S,
    ) -> None:
        self.batch = batch
        self.wait = wait
        self.live = live
        self.plain_every_s = plain_every_s
        self._progress: _BarWithCounts | None = None
        self._task: TaskID | None = None
        self._todo = 0

    async def follow(self, counters: RunCounters, todo: int) -> None:
        """Refresh until cancelled. `todo`: items this run is expected to settle."""
        if self.live:
            await self._follow_live(counters, todo)
        else:
            await self._follow_plain(counters, todo)

    async def _follow_live(self, counters: RunCounters, todo: int) -> None:
        name = self.batch if len(self.batch) <= NAME_WIDTH else self.batch[: NAME_WIDTH - 1] + "…"
        progress = _BarWithCounts(
            TextColumn("[bold]{task.description}", markup=True),
            BarColumn(bar_width=BAR_WIDTH),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=output.stderr,
            transient=False,
        )
        self._progress = progress
        # The name is the user's: escaped, never Rich markup.
        self._todo = max(todo, 0)
        self._task = progress.add_task(name.replace("[", r"\["), total=self._todo)
        with progress:
            try:
                while True:
                    self._refresh(counters)
                    await anyio.sleep(LIVE_REFRESH_S)
            finally:
                self._refresh(counters)

    def _refresh(self, counters: RunCounters) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.detail = compact(counters, wait=self.wait)
            self._progress.update(
                self._task,
                completed=min(finished_count(counters, wait=self.wait), self._todo),
            )

    async def _follow_plain(self, counters: RunCounters, todo: int) -> None:
        try:
            while True:
                await anyio.sleep(self.plain_every_s)
                log.info("%s", plain_line(self.batch, counters, todo, wait=self.wait))
        finally:
            # And once at the end: the log says where the run got to.
            log.info("%s", plain_line(self.batch, counters, todo, wait=self.wait))
