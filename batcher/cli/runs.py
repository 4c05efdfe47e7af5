"""`batcher run`, `batcher resume` and `batcher worker`: the commands that send."""

from __future__ import annotations

import signal
import sys
from typing import Any, NoReturn

import click

from batcher import library
from batcher.cli.options import canary_options, max_items_option, requeue_options, run_options
from batcher.errors import EXIT_TERMINATED
from batcher.reports.run_summary import worst_exit_code
from batcher.terminal.run_views import TerminalRunObserver


def _send_settings(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags as the library's keyword arguments (`--no-wait` is `wait=False`...)."""
    renamed = {"out_dir": "out", "db_url": "db", "catalog_path": "catalog"}
    negated = {
        "no_wait": "wait",
        "no_download": "download",
        "no_preflight": "preflight",
        "no_metadata": "metadata",
        "no_gallery": "gallery",
    }
    settings: dict[str, Any] = {}
    for flag, value in flags.items():
        if flag in negated:
            settings[negated[flag]] = not value
        else:
            settings[renamed.get(flag, flag)] = value
    return settings


def _terminated(_signum: int, _frame: object) -> NoReturn:
    raise SystemExit(EXIT_TERMINATED)


def _prepare(ctx: click.Context) -> TerminalRunObserver:
    """The observer that shows the run; SIGTERM before or after the run itself (which
    handles it) ends the process with 143 through every `finally`, like Ctrl-C."""
    signal.signal(signal.SIGTERM, _terminated)
    return TerminalRunObserver(quiet=bool(ctx.meta.get("batcher.quiet")))


@click.command()
@click.argument("jobs", nargs=-1, required=True, metavar="JOB.yaml...")
@click.option(
    "--sandbox",
    is_flag=True,
    help="Run against a local emulator of the API started for this run (no key, no credits).",
)
@click.option("--batch-name", metavar="NAME", help="Use this batch name instead of the file's.")
@max_items_option
@run_options
@requeue_options
@canary_options
@click.pass_context
def run(ctx: click.Context, /, jobs: tuple[str, ...], **flags: Any) -> None:
    """Validate, plan and run every pending item of the job files.

    Re-running the same job file resumes its batch: items already complete are
    not sent again. By default the run follows every render to the end,
    downloads the images and records refunds.
    """
    observer = _prepare(ctx)
    summaries = library.run_many(list(jobs), observer=observer, **_send_settings(flags))
    sys.exit(worst_exit_code(summaries))


@click.command()
@click.argument("batch_name", metavar="BATCH")
@click.option(
    "--sandbox", is_flag=True, help="The batch was run with --sandbox: use a local emulator again."
)
@run_options
@requeue_options
@canary_options
@click.pass_context
def resume(ctx: click.Context, /, batch_name: str, **flags: Any) -> None:
    """Run again what is pending, failed-and-retryable or interrupted in a batch.

    Every known project is polled first (fresh download URLs, late refunds),
    then items are sent: pending ones, renders that failed, and creates refused
    with 429/5xx. Creates refused with another 4xx need --retry-failed; items in
    doubt need --resend-unconfirmed.
    """
    observer = _prepare(ctx)
    summary = library.resume(batch_name, observer=observer, **_send_settings(flags))
    sys.exit(summary.exit_code)


@click.command()
@click.argument("batch_name", metavar="BATCH")
@run_options
@click.pass_context
def worker(ctx: click.Context, /, batch_name: str, **flags: Any) -> None:
    """Add one more worker to a batch whose ledger is shared (PostgreSQL).

    Workers claim items in small groups, so any number of them, on any number
    of machines, can serve one batch. A worker that dies leaves its items to the
    others: at once on the same machine, else when its lease expires. Items it
    was sending become in doubt.
    """
    observer = _prepare(ctx)
    summary = library.worker(batch_name, observer=observer, **_send_settings(flags))
    sys.exit(summary.exit_code)


COMMANDS: list[click.Command] = [run, resume, worker]
