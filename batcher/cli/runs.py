"""`batcher run`, `batcher resume` and `batcher worker`: the commands that send."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anyio
import click

from batcher.cli.options import requeue_options, run_options
from batcher.client.magic_hour import MagicHourClient
from batcher.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, ConfigError
from batcher.jobfile.catalog import Catalog, load_catalog
from batcher.ledger import BatchRecord, Ledger, display_url
from batcher.run import prepare as service
from batcher.run.batch_run import STOP_INTERRUPTED, BatchRun, RunOptions, RunResult
from batcher.settings import ApiConfig, database_url
from batcher.terminal import console as output
from batcher.terminal.progress import RunDisplay, summary_table

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Flags:
    """The flags every sending command shares, as given."""

    concurrency: int
    rate: float | None
    budget: int | None
    out_dir: Path | None
    no_wait: bool
    no_download: bool
    render_retries: int
    batch_concurrency: int | None
    batch_rate: float | None
    no_preflight: bool
    db_url: str | None
    catalog_path: Path | None
    base_url: str | None
    # Requeue choices: `run` and `resume` only.
    resend_unconfirmed: bool = False
    retry_failed: bool = False

    def options(self, *, joining: bool = False) -> RunOptions:
        return RunOptions(
            poll_known_first=not (joining and self.no_wait),
            concurrency=self.concurrency,
            rate=self.rate,
            wait=not self.no_wait,
            download=not self.no_download,
            out_dir=self.out_dir,
            render_retries=self.render_retries,
        )


@contextlib.contextmanager
def _endpoint(sandbox: bool, base_url: str | None) -> Iterator[ApiConfig]:
    """The API to talk to: the real one (key from the environment) or a local sandbox."""
    if not sandbox:
        api = ApiConfig.from_env(base_url)
        service.require_key(api)
        yield api
        return
    from batcher.sandbox import SandboxConfig, running_sandbox

    with running_sandbox(SandboxConfig()) as emulator:
        output.note(f"sandbox: serving the Magic Hour API emulator at {emulator.base_url}")
        yield ApiConfig(base_url=emulator.base_url, api_key=emulator.key)


def _check_endpoint(ledger: Ledger, batch: BatchRecord, endpoint: str) -> None:
    """A batch's project ids only mean something to the API that created them."""
    recorded = batch.settings.get("endpoint")
    if recorded is None:
        ledger.update_settings(batch.id, {"endpoint": endpoint})
    elif (recorded == "sandbox") != (endpoint == "sandbox"):
        if recorded == "sandbox":
            raise ConfigError(
                f"batch {batch.name!r} was run against the sandbox; add --sandbox "
                "(or use another batch name for the real API)"
            )
        raise ConfigError(
            f"batch {batch.name!r} was run against {recorded}; the sandbox cannot follow "
            "its projects (drop --sandbox)"
        )
    elif recorded != endpoint:
        output.warning(f"batch {batch.name!r} was started against {recorded}, now {endpoint}")


async def _drive(
    ledger: Ledger,
    api: ApiConfig,
    batch: BatchRecord,
    catalog: Catalog,
    flags: _Flags,
    quiet: bool,
    joining: bool = False,
) -> RunResult:
    options = flags.options(joining=joining)
    batch = service.set_shared_limits(
        ledger, batch, rate=flags.batch_rate, concurrency=flags.batch_concurrency
    )
    async with MagicHourClient(api, concurrency=options.concurrency) as client:
        if not flags.no_preflight:
            report = await service.preflight(client, ledger, batch, catalog)
            if report.warning:
                output.warning(report.warning)
        run = service.new_run(ledger, client, batch, options)
        todo = sum(n for state, n in ledger.state_counts(batch.id).items() if state != "complete")
        display = RunDisplay(
            batch.name, wait=options.wait, live=output.stderr.is_terminal and not quiet
        )
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_on_signals, run)
            tasks.start_soon(display.follow, run.counters, todo)
            try:
                result = await run.run()
            finally:
                tasks.cancel_scope.cancel()
        return result


async def _on_signals(run: BatchRun) -> None:
    """First Ctrl-C (or SIGTERM): stop, recording creates in flight. Second: abort those too."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        first = True
        async for _ in signals:
            if first:
                output.warning(
                    "stopping: waiting for creates already sent to answer (Ctrl-C again to abort)"
                )
                run.interrupt()
                first = False
            else:
                run.abort()


def _report(result: RunResult, db_url: str, *, quiet: bool) -> int:
    if not quiet:
        output.stderr.print(summary_table(result))
    resume = f"batcher resume {_quote(result.batch)}"
    if db_url != database_url(None, {}):
        resume += f" --db {_quote(db_url)}"
    states = result.states
    if result.stopped == STOP_INTERRUPTED:
        output.warning(f"interrupted; the ledger is consistent. Continue with: {resume}")
        return EXIT_INTERRUPTED
    if result.stopped is not None:
        output.warning(
            f"sending stopped: {result.stop_detail}; {result.unsent} item(s) left unsent. "
            f"Continue with: {resume}"
        )
    if states.get("unconfirmed"):
        output.warning(
            f"{states['unconfirmed']} item(s) are in doubt (sent, answer lost): "
            f"`batcher reconcile {_quote(result.batch)}` lists them; "
            f"`{resume} --resend-unconfirmed` sends them again"
        )
    if states.get("failed"):
        output.warning(
            f"{states['failed']} item(s) failed; `batcher status {_quote(result.batch)}` "
            f"shows why; `{resume}` retries those worth retrying"
        )
    return EXIT_OK if result.succeeded else EXIT_FAILURE


def _run_async(func: Callable[..., Awaitable[T]], *args: object) -> T:
    """anyio.run on uvloop when it is installed: a cheaper event loop leaves more
    of the core to HTTP and the ledger."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return anyio.run(func, *args)
    return anyio.run(func, *args, backend_options={"use_uvloop": True})


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _flags(**kwargs: object) -> _Flags:
    return _Flags(**kwargs)  # type: ignore[arg-type]


@click.command()
@click.argument("jobs", nargs=-1, required=True, metavar="JOB.yaml...")
@click.option(
    "--sandbox",
    is_flag=True,
    help="Run against a local emulator of the API started for this run (no key, no credits).",
)
@click.option("--batch-name", metavar="NAME", help="Use this batch name instead of the file's.")
@run_options
@requeue_options
@click.pass_context
def run(
    ctx: click.Context,
    /,
    jobs: tuple[str, ...],
    sandbox: bool,
    batch_name: str | None,
    **kwargs: object,
) -> None:
    """Validate, plan and run every pending item of the job files.

    Re-running the same job file resumes its batch: items already complete are
    not sent again. By default the run follows every render to the end,
    downloads the images and records refunds.
    """
    flags = _flags(**kwargs)
    quiet = bool(ctx.meta.get("batcher.quiet"))
    catalog = load_catalog(flags.catalog_path)
    specs = service.load_jobs(jobs, catalog, batch_name=batch_name)
    for spec in specs:
        for warning in spec.warnings:
            output.warning(str(warning))
    db_url = database_url(flags.db_url)
    code = EXIT_OK
    with _endpoint(sandbox, flags.base_url) as api, Ledger.open(db_url) as ledger:
        endpoint = "sandbox" if sandbox else api.base_url
        for spec in specs:
            prepared = service.prepare_batch(
                ledger,
                spec,
                catalog,
                budget=flags.budget,
                retry_failed=flags.retry_failed,
                resend_unconfirmed=flags.resend_unconfirmed,
            )
            _check_endpoint(ledger, prepared.batch, endpoint)
            _note_preparation(prepared, db_url)
            result = _run_async(_drive, ledger, api, prepared.batch, catalog, flags, quiet)
            code = max(code, _report(result, db_url, quiet=quiet))
            if code == EXIT_INTERRUPTED:
                break
    sys.exit(code)


def _note_preparation(prepared: service.PreparedBatch, db_url: str) -> None:
    sync, requeued = prepared.sync, prepared.requeued
    parts = [f"batch {prepared.batch.name!r} in {display_url(db_url)}"]
    if sync.added:
        parts.append(f"{sync.added} new item(s)")
    if sync.kept:
        parts.append(f"{sync.kept} already known")
    if requeued.retried or requeued.repoll or requeued.resend:
        parts.append(
            f"retrying {requeued.retried + requeued.resend} and re-following {requeued.repoll}"
        )
    output.note("; ".join(parts))
    if sync.dropped:
        output.warning(
            f"{sync.dropped} never-sent item(s) are no longer in the job file and were dropped"
        )


@click.command()
@click.argument("batch_name", metavar="BATCH")
@click.option(
    "--sandbox", is_flag=True, help="The batch was run with --sandbox: use a local emulator again."
)
@run_options
@requeue_options
@click.pass_context
def resume(ctx: click.Context, /, batch_name: str, sandbox: bool, **kwargs: object) -> None:
    """Run again what is pending, failed-and-retryable or interrupted in a batch.

    Every known project is polled first (fresh download URLs, late refunds),
    then items are sent: pending ones, renders that failed, and creates refused
    with 429/5xx. Creates refused with another 4xx need --retry-failed; items in
    doubt need --resend-unconfirmed.
    """
    _serve_existing(ctx, batch_name, _flags(**kwargs), sandbox=sandbox, requeue=True)


@click.command()
@click.argument("batch_name", metavar="BATCH")
@run_options
@click.pass_context
def worker(ctx: click.Context, /, batch_name: str, **kwargs: object) -> None:
    """Add one more worker to a batch whose ledger is shared (PostgreSQL).

    Workers claim items in small groups, so any number of them, on any number
    of machines, can serve one batch. A worker that dies leaves its items to the
    others: at once on the same machine, else when its lease expires. Items it
    was sending become in doubt.
    """
    _serve_existing(ctx, batch_name, _flags(**kwargs), sandbox=False, requeue=False)


def _serve_existing(
    ctx: click.Context, batch_name: str, flags: _Flags, *, sandbox: bool, requeue: bool
) -> None:
    """`resume` (requeue what is retryable first) or `worker` (join as things are)."""
    quiet = bool(ctx.meta.get("batcher.quiet"))
    catalog = load_catalog(flags.catalog_path)
    db_url = database_url(flags.db_url)
    with Ledger.open(db_url, create=False) as ledger:
        batch = service.find_batch(ledger, batch_name)
        with _endpoint(sandbox, flags.base_url) as api:
            _check_endpoint(ledger, batch, "sandbox" if sandbox else api.base_url)
            if requeue:
                prepared = service.resume_batch(
                    ledger,
                    batch_name,
                    budget=flags.budget,
                    retry_failed=flags.retry_failed,
                    resend_unconfirmed=flags.resend_unconfirmed,
                )
                _note_preparation(prepared, db_url)
                batch = prepared.batch
            elif flags.budget is not None:
                ledger.set_budget(batch.id, flags.budget)
                batch = ledger.get_batch_by_id(batch.id)
            result = _run_async(_drive, ledger, api, batch, catalog, flags, quiet, not requeue)
    sys.exit(_report(result, db_url, quiet=quiet))


COMMANDS: list[click.Command] = [run, resume, worker]
