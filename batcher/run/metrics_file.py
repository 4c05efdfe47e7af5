"""Writing `--metrics-file` while a run goes: at its start, every 15 s, and at its
end, each time atomically (a temporary file renamed over the old one, by
prometheus_client's `write_to_textfile`), so node_exporter never reads half a
file. The figures are built by batcher.reports.metrics.

Batches the file held before and this process does not run are kept as they
were; so is a batch's last exit code until its run ends.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path

import anyio
import anyio.to_thread
from prometheus_client import write_to_textfile

from batcher.errors import ConfigError
from batcher.ledger import Ledger
from batcher.reports import metrics
from batcher.run.state import RunCounters
from batcher.run.summary import RunSummary

log = logging.getLogger(__name__)

WRITE_EVERY_S = 15.0
# A test seam, like BATCHER_RETRY_INSTANT: tests cannot wait 15 s for a write.
EVERY_ENV = "BATCHER_METRICS_EVERY_S"


def write_interval() -> float:
    try:
        return max(0.05, float(os.environ.get(EVERY_ENV, WRITE_EVERY_S)))
    except ValueError:
        return WRITE_EVERY_S


def check_metrics_path(path: Path) -> None:
    """Before anything is sent: the file's folder must exist and be writable."""
    folder = path.parent if str(path.parent) else Path()
    if path.is_dir():
        raise ConfigError(f"--metrics-file {path}: is a folder")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError(f"--metrics-file {path}: its folder {folder} is missing or not writable")


class MetricsFile:
    """The metrics of the batches this process runs, in one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._batches: dict[str, metrics.BatchMetrics] = {}
        try:
            self._batches.update(metrics.parse(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, UnicodeDecodeError):
            # Not ours, or damaged: started afresh (the first write replaces it).
            log.warning("%s: not a metrics file written by batcher; replaced", path)

    def update(self, current: metrics.BatchMetrics) -> None:
        before = self._batches.get(current.batch)
        if before is not None and current.last_exit_code is None:
            current = dataclasses.replace(
                current,
                last_exit_code=before.last_exit_code,
                last_finished_s=before.last_finished_s,
            )
        self._batches[current.batch] = current

    def write(self) -> None:
        write_to_textfile(os.fspath(self.path), metrics.registry(self._batches.values()))

    async def write_async(self) -> None:
        try:
            await anyio.to_thread.run_sync(self.write)
        except OSError as exc:
            # The metrics watch the run; they never stop it.
            log.warning("metrics file %s not written: %s", self.path, exc.strerror or exc)


def live_metrics(
    ledger: Ledger, batch_id: int, name: str, counters: RunCounters
) -> metrics.BatchMetrics:
    """The batch's figures now: states and credits from the ledger, the rest from the
    run's counters (blocking: call it in a thread)."""
    [totals] = [summary for summary in ledger.batch_summaries(name) if summary.id == batch_id]
    return metrics.BatchMetrics(
        batch=name,
        states=dict(totals.states),
        credits_charged=totals.credits_charged,
        credits_refunded=totals.credits_refunded,
        credits_net=totals.credits_net,
        creates=metrics.create_outcomes(
            sent=counters.sent, created=counters.created, unconfirmed=counters.unconfirmed
        ),
        polls=counters.polls,
        webhook_events=counters.webhook_events,
        duration_s=counters.elapsed,
    )


def final_metrics(summary: RunSummary, counters: RunCounters) -> metrics.BatchMetrics:
    """The batch's figures when its run ended: the summary's (the ledger's) and the
    exit code."""
    return metrics.BatchMetrics(
        batch=summary.batch,
        states=dict(summary.states),
        credits_charged=summary.credits_charged,
        credits_refunded=summary.credits_refunded,
        credits_net=summary.credits_net,
        creates=metrics.create_outcomes(
            sent=counters.sent, created=counters.created, unconfirmed=counters.unconfirmed
        ),
        polls=counters.polls,
        webhook_events=counters.webhook_events,
        duration_s=summary.duration_s,
        last_exit_code=summary.exit_code,
        last_finished_s=summary.finished_at.timestamp(),
    )


async def keep_writing(
    file: MetricsFile, ledger: Ledger, batch_id: int, name: str, counters: RunCounters
) -> None:
    """At once, then every 15 s, until cancelled."""
    every = write_interval()
    while True:
        try:
            current = await anyio.to_thread.run_sync(
                functools.partial(live_metrics, ledger, batch_id, name, counters)
            )
        except Exception:  # a busy or failing ledger: the run says so, not the metrics
            log.debug("metrics: the ledger could not be read", exc_info=True)
        else:
            file.update(current)
            await file.write_async()
        await anyio.sleep(every)
