"""What a run reports beyond the caller's observer: the metrics file while it goes
and at its end (`--metrics-file`), and one notification at its end (`--notify`).

`reporting(observer, ...)` wraps the caller's observer; the session runs the
wrapped one. Neither report can change a run's outcome: a failure is a warning.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.to_thread

from batcher.reports import notify
from batcher.run.metrics_file import MetricsFile, check_metrics_path, final_metrics, keep_writing
from batcher.run.observer import RunObserver, RunProgress
from batcher.run.prepare import PreparedBatch
from batcher.run.state import RunCounters
from batcher.run.summary import RunSummary


def check_reports(metrics_file: Path | None, notify_urls: Sequence[str]) -> None:
    """Bad report settings are bad input, refused before anything is sent."""
    if metrics_file is not None:
        check_metrics_path(metrics_file)
    notify.check_urls(notify_urls)


class ReportingObserver(RunObserver):
    """The caller's observer, plus the metrics file and the notification."""

    def __init__(
        self, inner: RunObserver, metrics_file: Path | None, notify_urls: Sequence[str]
    ) -> None:
        self.inner = inner
        self.metrics = MetricsFile(metrics_file) if metrics_file is not None else None
        self.notify_urls = tuple(notify_urls)
        self._counters: RunCounters | None = None

    def sandbox_started(self, base_url: str) -> None:
        self.inner.sandbox_started(base_url)

    def warning(self, message: str) -> None:
        self.inner.warning(message)

    def prepared(self, prepared: PreparedBatch, db: str) -> None:
        self.inner.prepared(prepared, db)

    def stopping(self, signal_name: str, *, abort: bool) -> None:
        self.inner.stopping(signal_name, abort=abort)

    async def follow(self, progress: RunProgress) -> None:
        self._counters = progress.counters
        if self.metrics is None:
            await self.inner.follow(progress)
            return
        run = progress.run
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                keep_writing, self.metrics, run.ledger, run.batch.id, run.batch.name, run.counters
            )
            await self.inner.follow(progress)
            tasks.cancel_scope.cancel()

    def finished(self, summary: RunSummary) -> None:
        self.inner.finished(summary)

    async def ended(self, summary: RunSummary) -> None:
        """After `finished`: the last metrics, then the notification."""
        counters = self._counters or RunCounters()
        if self.metrics is not None:
            self.metrics.update(final_metrics(summary, counters))
            await self.metrics.write_async()
        if self.notify_urls:
            problem = await anyio.to_thread.run_sync(
                functools.partial(notify.send, self.notify_urls, notify.message(summary))
            )
            if problem is not None:
                self.inner.warning(problem)


def reporting(
    observer: RunObserver, metrics_file: Path | None, notify_urls: Sequence[str]
) -> ReportingObserver | None:
    """The wrapped observer, or None when no report is asked for."""
    if metrics_file is None and not notify_urls:
        return None
    return ReportingObserver(observer, metrics_file, notify_urls)
