"""`batcher run`, `batcher resume` and `batcher worker`: the commands that send."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from batcher import library
from batcher.cli.options import (
    canary_options,
    max_items_option,
    report_options,
    requeue_options,
    run_options,
)
from batcher.errors import EXIT_TERMINATED
from batcher.run.summary import RunSummary, summary_json, worst_exit_code
from batcher.terminal import console as output
from batcher.terminal.progress import DEFAULT_PROGRESS_INTERVAL_S
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


def _prepare(ctx: click.Context, flags: dict[str, Any] | None = None) -> TerminalRunObserver:
    """The observer that shows the run, and the log file when asked for (the report
    flags leave `flags`: the rest are the library's). SIGTERM or SIGHUP before or
    after the run itself (which handles them) ends the process with 143 through
    every `finally`, like Ctrl-C."""
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGHUP, _terminated)
    report = {} if flags is None else flags
    log_file, log_format = report.pop("log_file", None), report.pop("log_format", "text")
    if log_file is not None:
        output.add_log_file(log_file, json_lines=log_format == "json")
    return TerminalRunObserver(
        quiet=bool(ctx.meta.get("batcher.quiet")),
        as_json=report.pop("as_json", False),
        progress_interval=report.pop("progress_interval", DEFAULT_PROGRESS_INTERVAL_S),
    )


def _report(observer: TerminalRunObserver, summaries: Sequence[RunSummary]) -> None:
    """With --json, each batch's document on stdout, one per line."""
    if observer.as_json:
        for summary in summaries:
            output.result(json.dumps(summary_json(summary), ensure_ascii=False))


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
@report_options
@canary_options
@click.pass_context
def run(ctx: click.Context, /, jobs: tuple[str, ...], **flags: Any) -> None:
    """Validate, plan and run every pending item of the job files.

    Re-running the same job file resumes its batch: items already complete are
    not sent again. By default the run follows every render to the end,
    downloads the images and records refunds.
    """
    observer = _prepare(ctx, flags)
    summaries = library.run_many(list(jobs), observer=observer, **_send_settings(flags))
    _report(observer, summaries)
    sys.exit(worst_exit_code(summaries))


@click.command()
@click.argument("batch_name", metavar="BATCH")
@click.option(
    "--sandbox", is_flag=True, help="The batch was run with --sandbox: use a local emulator again."
)
@run_options
@requeue_options
@report_options
@canary_options
@click.pass_context
def resume(ctx: click.Context, /, batch_name: str, **flags: Any) -> None:
    """Run again what is pending, failed-and-retryable or interrupted in a batch.

    Every known project is polled first (fresh download URLs, late refunds),
    then items are sent: pending ones, renders that failed, and creates refused
    with 429/5xx. Creates refused with another 4xx need --retry-failed; items in
    doubt need --resend-unconfirmed.
    """
    observer = _prepare(ctx, flags)
    summary = library.resume(batch_name, observer=observer, **_send_settings(flags))
    _report(observer, [summary])
    sys.exit(summary.exit_code)


@click.command()
@click.argument("batch_name", metavar="BATCH")
@run_options
@report_options
@click.pass_context
def worker(ctx: click.Context, /, batch_name: str, **flags: Any) -> None:
    """Add one more worker to a batch, sharing its ledger with the others.

    Workers claim items in small groups, so any number of them can serve one
    batch: on any number of machines with a PostgreSQL ledger, on this machine
    with a SQLite one. A worker that dies leaves its items to the
    others: at once on the same machine, else when its lease expires. Items it
    was sending become in doubt.
    """
    observer = _prepare(ctx, flags)
    summary = library.worker(batch_name, observer=observer, **_send_settings(flags))
    _report(observer, [summary])
    sys.exit(summary.exit_code)


# The shared --budget reads a job file's budget; resume and worker have none.
for _command in (resume, worker):
    for _param in _command.params:
        if _param.name == "budget" and isinstance(_param, click.Option):
            _param.help = (
                "Credit cap for the batch's net spend [default: the batch's current budget, "
                "if any]."
            )

COMMANDS: list[click.Command] = [run, resume, worker]
