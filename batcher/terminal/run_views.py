"""How a run shows on the terminal: notes while it is prepared, the progress
display while it goes, the summary and the next steps when it ends.

`TerminalRunObserver` is the observer the CLI hands to the library's sending
calls; the library itself prints nothing.
"""

from __future__ import annotations

import shlex

from rich.table import Table

from batcher.ledger import display_url
from batcher.reports.run_summary import RunSummary
from batcher.run.batch_run import STOP_BUDGET
from batcher.run.canary import STOP_CANARY, CanaryReport
from batcher.run.observer import RunObserver, RunProgress
from batcher.run.prepare import PreparedBatch
from batcher.settings import DEFAULT_DATABASE_URL
from batcher.terminal import canary_views
from batcher.terminal import console as output
from batcher.terminal.progress import RunDisplay


class TerminalRunObserver(RunObserver):
    """Notes and warnings on stderr, the live display on a terminal (a plain line
    now and then elsewhere), and each batch's summary as it ends."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet

    def sandbox_started(self, base_url: str) -> None:
        output.note(f"sandbox: serving the Magic Hour API emulator at {base_url}")

    def warning(self, message: str) -> None:
        output.warning(message)

    def prepared(self, prepared: PreparedBatch, db: str) -> None:
        output.note(preparation_note(prepared, db))
        if prepared.sync.dropped:
            output.warning(
                f"{prepared.sync.dropped} never-sent item(s) are no longer in the job file "
                "and were dropped"
            )

    async def follow(self, progress: RunProgress) -> None:
        live = output.stderr.is_terminal and not self.quiet
        display = RunDisplay(progress.batch, wait=progress.wait, live=live)
        await display.follow(progress.counters, progress.todo)

    def stopping(self, signal_name: str, *, abort: bool) -> None:
        if abort:
            output.warning(f"{signal_name} again: aborting the creates in flight (now in doubt)")
        else:
            output.warning(
                f"{signal_name}: stopping; waiting for creates already sent to answer "
                "(Ctrl-C again to abort)"
            )

    def canary_finished(self, report: CanaryReport) -> None:
        canary_views.print_canary(report)

    def confirm_canary(self, report: CanaryReport) -> bool | None:
        return canary_views.ask(report)

    def finished(self, summary: RunSummary) -> None:
        if not self.quiet:
            output.stderr.print(summary_table(summary))
        for hint in next_steps(summary):
            output.warning(hint)


def preparation_note(prepared: PreparedBatch, db: str) -> str:
    sync, requeued = prepared.sync, prepared.requeued
    parts = [f"batch {prepared.batch.name!r} in {db}"]
    if sync.added:
        parts.append(f"{sync.added} new item(s)")
    if sync.kept:
        parts.append(f"{sync.kept} already known")
    if requeued.retried or requeued.repoll or requeued.resend:
        parts.append(
            f"retrying {requeued.retried + requeued.resend} and re-following {requeued.repoll}"
        )
    return "; ".join(parts)


def summary_table(summary: RunSummary) -> Table:
    counters = summary.counters
    table = Table(title=f"batch {summary.batch}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for state, count in summary.states.items():
        if count:
            table.add_row(state, str(count))
    table.add_row("creates sent this run", str(counters.sent))
    table.add_row("images saved", str(counters.images))
    table.add_row("credits charged this run", str(counters.credits_charged))
    table.add_row("credits refunded this run", str(counters.credits_refunded))
    if counters.throttled:
        table.add_row("429 answers", str(counters.throttled))
    table.add_row("elapsed", f"{counters.elapsed:.1f}s")
    if summary.downloaded:
        table.add_row("images in", str(summary.out))
    if summary.gallery is not None:
        table.add_row("gallery", str(summary.gallery))
    return table


def next_steps(summary: RunSummary) -> list[str]:
    """What to do about what the run left, each with the command that does it."""
    batch = shlex.quote(summary.batch)
    db = ""
    if summary.db != display_url(DEFAULT_DATABASE_URL):
        db = f" --db {shlex.quote(summary.db)}"
    resume = f"batcher resume {batch}{db}"
    states = summary.states
    hints: list[str] = []
    if summary.interrupted:
        return [f"interrupted; the ledger is consistent. Continue with: {resume}"]
    if summary.stopped == STOP_CANARY:
        hints.append(f"{summary.stop_detail} ({summary.unsent} item(s) not sent yet)")
    elif summary.stopped is not None:
        again = f"{resume} --budget N" if summary.stopped == STOP_BUDGET else resume
        hints.append(
            f"sending stopped: {summary.stop_detail}; {summary.unsent} item(s) left unsent. "
            f"Continue with: {again}"
            + (" (N: the new cap in credits)" if summary.stopped == STOP_BUDGET else "")
        )
    if states.get("unconfirmed"):
        hints.append(
            f"{states['unconfirmed']} item(s) are in doubt (sent, answer lost): "
            f"`batcher reconcile {batch}{db}` lists them; "
            f"`{resume} --resend-unconfirmed` sends them again"
        )
    if states.get("failed"):
        hints.append(
            f"{states['failed']} item(s) failed; `batcher items {batch} --state failed{db}` "
            f"shows why; `{resume}` retries those worth retrying"
        )
    return hints
