"""The library API: everything the commands do, as calls that print nothing.

    import batcher

    plan = batcher.plan(["jobs/demo.yaml"])
    summary = batcher.run(["jobs/demo.yaml"], sandbox=True, concurrency=8)
    print(summary.exit_code, summary.states, summary.credits_net, summary.gallery)
    for b in batcher.status(db="sqlite:///batcher.db"):
        print(b.name, b.states, b.reviews)
    print(batcher.rerun("demo", rejected=True, dry_run=True).plan.credits)

Every function takes the settings of its command's flags as keyword arguments;
what is not given comes from the environment (`env`, default `os.environ`:
MAGIC_HOUR_API_KEY, MAGIC_HOUR_BASE_URL, BATCHER_DATABASE_URL, BATCHER_CATALOG),
else the defaults of DESIGN.md. Results are frozen dataclasses (the `--json`
shapes); failures raise the `batcher.BatcherError` tree, whose `exit_code` is
the CLI's. `*_async` twins are the same for code already inside an event loop.
Progress and notes reach the caller only through the `observer` it passes
(a `batcher.RunObserver`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from batcher.errors import ConfigError, JobFileError
from batcher.jobfile.catalog import CATALOG_ENV, load_catalog
from batcher.jobfile.loader import collect_jobs
from batcher.jobfile.plan import build_plan
from batcher.jobfile.results import JobCheck, PlanReport, Validation
from batcher.settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_RENDER_RETRIES,
    database_url,
)

# Everything past the job files (SQLAlchemy, httpx, anyio, the runner) is imported
# inside the calls that need it: `batcher validate` and `batcher plan` stay cheap.
if TYPE_CHECKING:
    from batcher.client.magic_hour import Account
    from batcher.reports.audit import AuditReport
    from batcher.reports.items import ItemsReport
    from batcher.reports.reconcile import ReconcileReport
    from batcher.reports.run_summary import RunSummary
    from batcher.reports.status import StatusReport
    from batcher.run.observer import RunObserver
    from batcher.run.rerun import RerunPlan, RerunResult
    from batcher.run.webhooks import WebhookListen
    from batcher.settings import ApiConfig

DEFAULT_GROUP_BY = ("batch",)

P = ParamSpec("P")
T = TypeVar("T")

PathLike = str | os.PathLike[str]
Environ = Mapping[str, str] | None


def _catalog_path(catalog: PathLike | None, env: Environ) -> str | None:
    environ = os.environ if env is None else env
    return os.fspath(catalog) if catalog is not None else environ.get(CATALOG_ENV) or None


def _webhook(listen: str | None, env: Environ) -> WebhookListen | None:
    """`--webhook-listen` and its secret (MAGIC_HOUR_WEBHOOK_SECRET), checked now."""
    from batcher.run.webhooks import webhook_settings

    return webhook_settings(listen, os.environ if env is None else env)


def _paths(jobs: PathLike | Sequence[PathLike]) -> list[str]:
    """One job file or several, as the user named them (messages quote them so)."""
    if isinstance(jobs, str | os.PathLike):
        return [os.fspath(jobs)]
    return [os.fspath(job) for job in jobs]


def event_loop_run(func: Callable[[], Awaitable[T]]) -> T:
    """anyio.run on uvloop when it is installed: a cheaper event loop leaves more
    of the core to HTTP and the ledger."""
    import anyio

    try:
        import uvloop  # noqa: F401
    except ImportError:
        return anyio.run(func)
    return anyio.run(func, backend_options={"use_uvloop": True})


def _blocking(func: Callable[P, Awaitable[T]], name: str) -> Callable[P, T]:
    """The blocking twin of an `*_async` function: same arguments, its own event loop."""

    @functools.wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return event_loop_run(functools.partial(func, *args, **kwargs))

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{func.__doc__}\n\nBlocking: runs its own event loop (see `{func.__name__}`)."
    return call


# --------------------------------------------------------------------------- job files


def validate(
    jobs: PathLike | Sequence[PathLike],
    *,
    catalog: PathLike | None = None,
    max_items: int | None = None,
    env: Environ = None,
) -> Validation:
    """Check job files and the prompts files they name; every problem, nothing sent.

    Returns the good files and the problems of the bad ones (`Validation.ok`);
    raises only when the catalog itself is unusable (CatalogError).
    """
    paths = _paths(jobs)
    loaded, problems = collect_jobs(
        paths, load_catalog(_catalog_path(catalog, env)), max_items=max_items
    )
    return Validation(
        jobs=tuple(JobCheck(job.path, job.name, job.item_count, job.warnings) for job in loaded),
        problems=tuple(problems),
        files=len(paths),
    )


def plan(
    jobs: PathLike | Sequence[PathLike],
    *,
    catalog: PathLike | None = None,
    batch_name: str | None = None,
    max_items: int | None = None,
    env: Environ = None,
) -> PlanReport:
    """Items, images and estimated credits per model of each job file; nothing sent.

    Raises JobFileError (every problem of every bad file) when any file is bad.
    """
    paths = _paths(jobs)
    chosen = load_catalog(_catalog_path(catalog, env))
    loaded, problems = collect_jobs(paths, chosen, batch_name=batch_name, max_items=max_items)
    if problems:
        raise JobFileError(
            problems,
            files=len(paths),
            bad_files=len(paths) - len(loaded),
            warnings=[warning for job in loaded for warning in job.warnings],
        )
    return PlanReport(
        tuple(build_plan(job, chosen) for job in loaded),
        tuple(warning for job in loaded for warning in job.warnings),
    )


# --------------------------------------------------------------------------- sending


async def run_many_async(
    jobs: PathLike | Sequence[PathLike],
    *,
    sandbox: bool = False,
    batch_name: str | None = None,
    max_items: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    rate: float | None = None,
    budget: int | None = None,
    out: PathLike | None = None,
    wait: bool = True,
    download: bool = True,
    metadata: bool = True,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    gallery: bool = True,
    render_retries: int = DEFAULT_RENDER_RETRIES,
    batch_concurrency: int | None = None,
    batch_rate: float | None = None,
    preflight: bool = True,
    resend_unconfirmed: bool = False,
    retry_failed: bool = False,
    webhook_listen: str | None = None,
    db: str | None = None,
    catalog: PathLike | None = None,
    base_url: str | None = None,
    env: Environ = None,
    observer: RunObserver | None = None,
    handle_signals: bool = True,
) -> tuple[RunSummary, ...]:
    """Validate, plan and run every pending item of each job file's batch, one batch
    after the other; a summary per batch (it stops after one interrupted by a signal).

    `sandbox`: run against a local emulator started for the call (no key, no
    credits). `metadata=False` leaves every image byte for byte as downloaded
    (no provenance chunks); `max_image_bytes` caps each download; `gallery=False`
    skips refreshing the batch's gallery page at the end. `webhook_listen`
    ("HOST:PORT") serves the account's webhook during the run, with the secret
    from MAGIC_HOUR_WEBHOOK_SECRET in `env` (ConfigError without it); polls are
    then only a fallback. `handle_signals`: the
    first SIGINT/SIGTERM stops sending and records the creates in flight (exit
    code 130/143), the second aborts them; only on the main thread.
    """
    from batcher.run.session import Context, SendSettings, run_jobs

    settings = SendSettings(
        concurrency=concurrency,
        rate=rate,
        budget=budget,
        out=Path(out) if out is not None else None,
        wait=wait,
        download=download,
        metadata=metadata,
        max_image_bytes=max_image_bytes,
        gallery=gallery,
        render_retries=render_retries,
        batch_concurrency=batch_concurrency,
        batch_rate=batch_rate,
        preflight=preflight,
        resend_unconfirmed=resend_unconfirmed,
        retry_failed=retry_failed,
        webhook=_webhook(webhook_listen, env),
    )
    context = Context.resolve(
        db=db,
        catalog=catalog,
        base_url=base_url,
        environ=env,
        observer=observer,
        handle_signals=handle_signals,
    )
    return await run_jobs(
        _paths(jobs),
        sandbox=sandbox,
        batch_name=batch_name,
        max_items=max_items,
        settings=settings,
        context=context,
    )


async def run_async(
    jobs: PathLike | Sequence[PathLike],
    *,
    sandbox: bool = False,
    batch_name: str | None = None,
    max_items: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    rate: float | None = None,
    budget: int | None = None,
    out: PathLike | None = None,
    wait: bool = True,
    download: bool = True,
    metadata: bool = True,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    gallery: bool = True,
    render_retries: int = DEFAULT_RENDER_RETRIES,
    batch_concurrency: int | None = None,
    batch_rate: float | None = None,
    preflight: bool = True,
    resend_unconfirmed: bool = False,
    retry_failed: bool = False,
    webhook_listen: str | None = None,
    db: str | None = None,
    catalog: PathLike | None = None,
    base_url: str | None = None,
    env: Environ = None,
    observer: RunObserver | None = None,
    handle_signals: bool = True,
) -> RunSummary:
    """Validate, plan and run every pending item of one job file's batch.

    Re-running the same job file resumes its batch. By default the run follows
    every render to the end, downloads the images and records refunds. Several
    job files: `run_many`. The settings are `run_many`'s.
    """
    paths = _paths(jobs)
    if len(paths) != 1:
        raise ConfigError(
            f"run takes one job file ({len(paths)} given); run_many runs several, "
            "one batch after the other"
        )
    [summary] = await run_many_async(
        paths,
        sandbox=sandbox,
        batch_name=batch_name,
        max_items=max_items,
        concurrency=concurrency,
        rate=rate,
        budget=budget,
        out=out,
        wait=wait,
        download=download,
        metadata=metadata,
        max_image_bytes=max_image_bytes,
        gallery=gallery,
        render_retries=render_retries,
        batch_concurrency=batch_concurrency,
        batch_rate=batch_rate,
        preflight=preflight,
        resend_unconfirmed=resend_unconfirmed,
        retry_failed=retry_failed,
        webhook_listen=webhook_listen,
        db=db,
        catalog=catalog,
        base_url=base_url,
        env=env,
        observer=observer,
        handle_signals=handle_signals,
    )
    return summary


async def resume_async(
    batch: str,
    *,
    sandbox: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    rate: float | None = None,
    budget: int | None = None,
    out: PathLike | None = None,
    wait: bool = True,
    download: bool = True,
    metadata: bool = True,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    gallery: bool = True,
    render_retries: int = DEFAULT_RENDER_RETRIES,
    batch_concurrency: int | None = None,
    batch_rate: float | None = None,
    preflight: bool = True,
    resend_unconfirmed: bool = False,
    retry_failed: bool = False,
    webhook_listen: str | None = None,
    db: str | None = None,
    catalog: PathLike | None = None,
    base_url: str | None = None,
    env: Environ = None,
    observer: RunObserver | None = None,
    handle_signals: bool = True,
) -> RunSummary:
    """Run again what is pending, failed-and-retryable or interrupted in a batch.

    Every known project is polled first, then pending items, failed renders and
    creates refused with 429/5xx are sent; other 4xx refusals need
    `retry_failed`, items in doubt `resend_unconfirmed`. The ledger must exist
    (LedgerMissingError otherwise). `sandbox`: the batch was run with it.
    """
    from batcher.run.session import Context, SendSettings, serve_batch

    return await serve_batch(
        batch,
        sandbox=sandbox,
        requeue=True,
        settings=SendSettings(
            concurrency=concurrency,
            rate=rate,
            budget=budget,
            out=Path(out) if out is not None else None,
            wait=wait,
            download=download,
            metadata=metadata,
            max_image_bytes=max_image_bytes,
            gallery=gallery,
            render_retries=render_retries,
            batch_concurrency=batch_concurrency,
            batch_rate=batch_rate,
            preflight=preflight,
            resend_unconfirmed=resend_unconfirmed,
            retry_failed=retry_failed,
            webhook=_webhook(webhook_listen, env),
        ),
        context=Context.resolve(
            db=db,
            catalog=catalog,
            base_url=base_url,
            environ=env,
            observer=observer,
            handle_signals=handle_signals,
        ),
    )


async def worker_async(
    batch: str,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    rate: float | None = None,
    budget: int | None = None,
    out: PathLike | None = None,
    wait: bool = True,
    download: bool = True,
    metadata: bool = True,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    gallery: bool = True,
    render_retries: int = DEFAULT_RENDER_RETRIES,
    batch_concurrency: int | None = None,
    batch_rate: float | None = None,
    preflight: bool = True,
    webhook_listen: str | None = None,
    db: str | None = None,
    catalog: PathLike | None = None,
    base_url: str | None = None,
    env: Environ = None,
    observer: RunObserver | None = None,
    handle_signals: bool = True,
) -> RunSummary:
    """One more worker on a batch whose ledger is shared: it joins the batch as it
    is (nothing requeued) and claims items beside the others."""
    from batcher.run.session import Context, SendSettings, serve_batch

    return await serve_batch(
        batch,
        sandbox=False,
        requeue=False,
        settings=SendSettings(
            concurrency=concurrency,
            rate=rate,
            budget=budget,
            out=Path(out) if out is not None else None,
            wait=wait,
            download=download,
            metadata=metadata,
            max_image_bytes=max_image_bytes,
            gallery=gallery,
            render_retries=render_retries,
            batch_concurrency=batch_concurrency,
            batch_rate=batch_rate,
            preflight=preflight,
            webhook=_webhook(webhook_listen, env),
        ),
        context=Context.resolve(
            db=db,
            catalog=catalog,
            base_url=base_url,
            environ=env,
            observer=observer,
            handle_signals=handle_signals,
        ),
    )


async def rerun_async(
    batch: str,
    *,
    rejected: bool = True,
    model: str | None = None,
    resolution: str | None = None,
    again: bool = False,
    dry_run: bool = False,
    confirm: Callable[[RerunPlan], bool] | None = None,
    sandbox: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    rate: float | None = None,
    budget: int | None = None,
    out: PathLike | None = None,
    wait: bool = True,
    download: bool = True,
    metadata: bool = True,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    gallery: bool = True,
    render_retries: int = DEFAULT_RENDER_RETRIES,
    batch_concurrency: int | None = None,
    batch_rate: float | None = None,
    preflight: bool = True,
    webhook_listen: str | None = None,
    db: str | None = None,
    catalog: PathLike | None = None,
    base_url: str | None = None,
    env: Environ = None,
    observer: RunObserver | None = None,
    handle_signals: bool = True,
) -> RerunResult:
    """A new item for each item of `batch` with a rejected image (`batcher review`),
    with the same prompt and settings unless `model` or `resolution` override
    them (checked against the catalog), each linked to the item it redoes.

    Returns the plan (`RerunResult.plan`: the items and their estimated cost)
    and, unless `dry_run` (nothing written, nothing sent) or `confirm(plan)`
    answered False, the run's summary: the new items run like `run`'s (preflight,
    progress, the gallery refreshed). `budget` caps what this rerun spends.
    Items that have a rerun already are left out unless `again`. Refuses
    (ConfigError) a batch with other pending items: `resume` sends those.
    """
    from batcher.run.session import Context, SendSettings, rerun_batch

    if not rejected:
        raise ConfigError("rerun: say which images to rerun (rejected=True, --rejected)")
    return await rerun_batch(
        batch,
        sandbox=sandbox,
        model=model,
        resolution=resolution,
        again=again,
        dry_run=dry_run,
        confirm=confirm,
        settings=SendSettings(
            concurrency=concurrency,
            rate=rate,
            budget=budget,
            out=Path(out) if out is not None else None,
            wait=wait,
            download=download,
            metadata=metadata,
            max_image_bytes=max_image_bytes,
            gallery=gallery,
            render_retries=render_retries,
            batch_concurrency=batch_concurrency,
            batch_rate=batch_rate,
            preflight=preflight,
            webhook=_webhook(webhook_listen, env),
        ),
        context=Context.resolve(
            db=db,
            catalog=catalog,
            base_url=base_url,
            environ=env,
            observer=observer,
            handle_signals=handle_signals,
        ),
    )


run_many = _blocking(run_many_async, "run_many")
run = _blocking(run_async, "run")
resume = _blocking(resume_async, "resume")
worker = _blocking(worker_async, "worker")
rerun = _blocking(rerun_async, "rerun")


# --------------------------------------------------------------------------- the ledger


def status(batch: str | None = None, *, db: str | None = None, env: Environ = None) -> StatusReport:
    """Counts per state and credits so far, per batch (all, or `batch`), and live workers.

    Iterating over the report gives the batches. A SQLite ledger that does not
    exist yet gives an empty report with `ledger_found=False`; an unknown
    `batch` is a ConfigError.
    """
    from batcher.ledger import Ledger
    from batcher.reports.status import status_report

    ledger, found = Ledger.open_for_report(database_url(db, env))
    with ledger:
        return status_report(ledger, batch, ledger_found=found)


def items(
    batch: str, state: str | None = None, *, db: str | None = None, env: Environ = None
) -> ItemsReport:
    """Every item of `batch` (or those in `state`): key, state, prompt, model, project
    id, credits, files, and why it failed or is in doubt. The ledger must exist."""
    from batcher.ledger import Ledger
    from batcher.reports.items import check_state, items_report

    check_state(state)
    with Ledger.open(database_url(db, env), create=False) as ledger:
        return items_report(ledger, batch, state)


def audit(
    *,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    batch: str | None = None,
    by: str | Sequence[str] = DEFAULT_GROUP_BY,
    chart: PathLike | None = None,
    db: str | None = None,
    env: Environ = None,
) -> AuditReport:
    """Credit spend from the ledger's credit rows: charges, refunds, net, grouped `by`
    batch, model, day (UTC) and/or resolution; `since` inclusive, `until` exclusive
    (ISO strings or datetimes, UTC unless they carry an offset).

    `chart`: also draw net credits per day stacked by model to that .png or .svg
    (needs the batcher[chart] extra; checked before any work).
    """
    from batcher.ledger import Ledger
    from batcher.reports import audit as audit_reports
    from batcher.reports import chart as charts

    group_by = audit_reports.parse_group_by(by if isinstance(by, str) else ",".join(by))
    query = audit_reports.AuditQuery(
        since=audit_reports.parse_when(since, "--since") if isinstance(since, str) else since,
        until=audit_reports.parse_when(until, "--until") if isinstance(until, str) else until,
        batch=batch,
        group_by=group_by,
    )
    chart_path = Path(chart) if chart is not None else None
    if chart_path is not None:
        # Before any work: a missing extra or a bad suffix is bad input (exit 2).
        charts.check_chart_path(chart_path)
        charts.require_matplotlib()
    ledger, found = Ledger.open_for_report(database_url(db, env))
    with ledger:
        report = audit_reports.build_audit(
            ledger, query, chart=chart_path is not None, ledger_found=found
        )
    if report.chart is not None and chart_path is not None:
        charts.write_chart(report.chart, chart_path, title=charts.chart_title(query.batch))
    return report


def db_upgrade(*, db: str | None = None, env: Environ = None) -> str:
    """Apply pending migrations to the ledger (creating a SQLite file if needed);
    returns its URL with any password hidden."""
    from batcher.ledger import Ledger, display_url

    url = database_url(db, env)
    with Ledger.open(url):
        pass
    return display_url(url)


async def status_async(
    batch: str | None = None, *, db: str | None = None, env: Environ = None
) -> StatusReport:
    """`status`, its database work in a worker thread."""
    import anyio.to_thread

    return await anyio.to_thread.run_sync(functools.partial(status, batch, db=db, env=env))


async def items_async(
    batch: str, state: str | None = None, *, db: str | None = None, env: Environ = None
) -> ItemsReport:
    """`items`, its database work in a worker thread."""
    import anyio.to_thread

    return await anyio.to_thread.run_sync(functools.partial(items, batch, state, db=db, env=env))


async def audit_async(
    *,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    batch: str | None = None,
    by: str | Sequence[str] = DEFAULT_GROUP_BY,
    chart: PathLike | None = None,
    db: str | None = None,
    env: Environ = None,
) -> AuditReport:
    """`audit`, its database work in a worker thread."""
    import anyio.to_thread

    return await anyio.to_thread.run_sync(
        functools.partial(
            audit, since=since, until=until, batch=batch, by=by, chart=chart, db=db, env=env
        )
    )


# --------------------------------------------------------------------------- the API


def _api(base_url: str | None, env: Environ) -> ApiConfig:
    from batcher.run.prepare import require_key
    from batcher.settings import ApiConfig

    api = ApiConfig.from_env(base_url, env)
    require_key(api)
    return api


async def reconcile_async(
    batch: str | None = None,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    db: str | None = None,
    base_url: str | None = None,
    env: Environ = None,
) -> ReconcileReport:
    """Re-poll every known project of `batch` (or every batch), record late refunds,
    list the items in doubt. Changes no item state, downloads nothing.
    `ReconcileReport.complete` is False when some project could not be polled."""
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1, not {concurrency}")
    import anyio.to_thread

    from batcher.client.magic_hour import MagicHourClient
    from batcher.ledger import Ledger
    from batcher.reports.reconcile import reconcile as reconcile_projects

    api = _api(base_url, env)
    url = database_url(db, env)
    ledger = await anyio.to_thread.run_sync(functools.partial(Ledger.open, url, create=False))
    with ledger:
        async with MagicHourClient(api, concurrency=concurrency) as client:
            return await reconcile_projects(ledger, client, batch, concurrency=concurrency)


async def account_async(*, base_url: str | None = None, env: Environ = None) -> Account:
    """Balance and tier of the API key's account (GET /v1/account)."""
    from batcher.client import retry
    from batcher.client.magic_hour import MagicHourClient

    api = _api(base_url, env)
    async with MagicHourClient(api, concurrency=1) as client:
        return await retry.read(client.get_account)


reconcile = _blocking(reconcile_async, "reconcile")
account = _blocking(account_async, "account")
