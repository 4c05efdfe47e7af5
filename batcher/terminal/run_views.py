"""How a run shows on the terminal: notes while it is prepared, the progress
display while it goes, the summary and the next steps when it ends.

`TerminalRunObserver` is the observer the CLI hands to the library's sending
calls; the library itself prints nothing.
"""

from __future__ import annotations

import shlex

from rich.table import Table
from rich.text import Text

from batcher.ledger import display_url
from batcher.run.batch_run import STOP_BUDGET
from batcher.run.canary import STOP_CANARY, CanaryReport
from batcher.run.observer import RunObserver, RunProgress
from batcher.run.prepare import PreparedBatch
from batcher.run.summary import RunSummary
from batcher.settings import DEFAULT_DATABASE_URL
from batcher.terminal import canary_views
from batcher.terminal import console as output
from batcher.terminal.progress import DEFAULT_PROGRESS_INTERVAL_S, RunDisplay
from batcher.terminal.tables import print_table


class TerminalRunObserver(RunObserver):
    """Notes, warnings and progress on stderr (the live display on a terminal, a
    plain line every `progress_interval` seconds elsewhere); each batch's summary
    on stdout as it ends: a table, one line with `quiet`, nothing with `as_json`
    (the CLI prints the JSON document itself)."""

    def __init__(
        self,
        *,
        quiet: bool = False,
        as_json: bool = False,
        progress_interval: float = DEFAULT_PROGRESS_INTERVAL_S,
    ) -> None:
        self.quiet = quiet
        self.as_json = as_json
        self.progress_interval = progress_interval
        self.sandbox = False  # the hints name --sandbox when the run used it

    def sandbox_started(self, base_url: str) -> None:
        self.sandbox = True
        if not self.quiet:
            output.note(f"sandbox: serving the Magic Hour API emulator at {base_url}")

    def warning(self, message: str) -> None:
        output.warning(message)

    def prepared(self, prepared: PreparedBatch, db: str) -> None:
        if not self.quiet:  # -q: only warnings, errors and results
            output.note(preparation_note(prepared, db))
        if prepared.sync.dropped:
            output.warning(
                f"{prepared.sync.dropped} never-sent item(s) are no longer in the job file "
                "and were dropped"
            )

    async def follow(self, progress: RunProgress) -> None:
        live = output.stderr.is_terminal and not self.quiet
        display = RunDisplay(
            progress.batch, wait=progress.wait, live=live, plain_every_s=self.progress_interval
        )
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
        if self.as_json:
            pass
        elif self.quiet:
            output.result(summary_line(summary))
        else:
            print_table(summary_table(summary))
        for hint in next_steps(summary, sandbox=self.sandbox):
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


def summary_line(summary: RunSummary) -> str:
    """The summary as one line (`-q`): batch, exit code, states, credits, time, folder."""
    states = ", ".join(f"{n:,} {state}" for state, n in summary.states.items() if n)
    parts = [
        f"batch {summary.batch}: exit {summary.exit_code}",
        f"{summary.items:,} items ({states or 'none'})",
        f"{summary.credits_net:,} credits net ({summary.credits_charged:,} charged, "
        f"{summary.credits_refunded:,} refunded)",
        f"{summary.duration_s:,.1f}s",
    ]
    if summary.downloaded:
        parts.append(f"images in {summary.out}")
    if summary.gallery is not None:
        parts.append(f"gallery {summary.gallery}")
    return " · ".join(parts)


def summary_table(summary: RunSummary) -> Table:
    counters = summary.counters
    # Text, not str: the batch name is the user's, never Rich markup.
    table = Table(title=Text(f"batch {summary.batch}"), show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for state, count in summary.states.items():
        if count:
            table.add_row(state, f"{count:,}")
    table.add_row("creates sent this run", f"{counters.sent:,}")
    table.add_row("images saved", f"{counters.images:,}")
    table.add_row("credits charged this run", f"{counters.credits_charged:,}")
    table.add_row("credits refunded this run", f"{counters.credits_refunded:,}")
    if counters.throttled:
        table.add_row("429 answers", f"{counters.throttled:,}")
    table.add_row("elapsed", f"{counters.elapsed:,.1f}s")
    if summary.downloaded:
        table.add_row("images in", Text(str(summary.out)))
    if summary.gallery is not None:
        table.add_row("gallery", Text(str(summary.gallery)))
    return table


def next_steps(summary: RunSummary, *, sandbox: bool = False) -> list[str]:
    """What to do about what the run left, each with the command that does it
    (`sandbox`: the run used `--sandbox`, so the batch's commands need it too)."""
    batch = shlex.quote(summary.batch)
    db = ""
    if display_url(summary.db) != display_url(DEFAULT_DATABASE_URL):
        db = f" --db {shlex.quote(summary.db)}"
    resume = f"batcher resume {batch}{db}" + (" --sandbox" if sandbox else "")
    states = summary.states
    hints: list[str] = []
    if summary.interrupted:
        return [f"interrupted; the ledger is consistent. Continue with: {resume}"]
    if summary.stopped == STOP_CANARY:
        hints.append(f"{summary.stop_detail} ({summary.unsent} item(s) not sent yet)")
    elif summary.stopped is not None:
        again = f"{resume} --budget N" if summary.stopped == STOP_BUDGET else resume
        hints.append(
            f"sending stopped: {summary.stop_detail}; {summary.unsent:,} item(s) left unsent. "
            f"Continue with: {again}"
            + (" (N: the new cap in credits)" if summary.stopped == STOP_BUDGET else "")
        )
    if states.get("unconfirmed"):
        # reconcile asks the API: a sandbox's projects died with it.
        check = "" if sandbox else f"; `batcher reconcile {batch}{db}` asks the API about them"
        hints.append(
            f"{states['unconfirmed']:,} item(s) are in doubt (sent, answer lost): "
            f"`batcher items {batch} --state unconfirmed{db}` lists them{check}; "
            f"`{resume} --resend-unconfirmed` sends them again (they may be charged twice)"
        )
    if states.get("failed"):
        hints.append(
            f"{states['failed']:,} item(s) failed; `batcher items {batch} --state failed{db}` "
            f"shows why; `{resume}` retries those worth retrying"
        )
    if not summary.waited and states.get("submitted"):
        hints.append(
            f"{states['submitted']:,} item(s) submitted without waiting (--no-wait): "
            f"`{resume}` follows their renders and fetches the images"
        )
    return hints
