"""The sending use cases: `run` (job files), `resume` and `worker` (a batch in the
ledger), and `rerun` (a batch's rejected images), from settings to one summary
per batch.

Each batch goes the same way: refuse bad input before anything is sent (job
files, the output folder, the key, the endpoint), prepare the batch in the
ledger, check the account (preflight), then run one `BatchRun` beside the
caller's observer and the signal handler, and sum the ledger into a
`RunSummary` whose exit code the CLI returns as is.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import anyio
import anyio.to_thread

from batcher.client.magic_hour import MagicHourClient, Timeouts
from batcher.errors import ConfigError, InputError
from batcher.folders import MANIFEST, batch_folder
from batcher.jobfile.catalog import CATALOG_ENV, Catalog, load_catalog
from batcher.jobfile.items import ItemSettings, project_name
from batcher.ledger import (
    BatchRecord,
    ItemRecord,
    Ledger,
    RequeueCounts,
    SyncResult,
    display_url,
)
from batcher.ledger.models import utcnow
from batcher.reports.gallery import write_gallery
from batcher.reports.gallery_data import PAGE_NAME, gallery_folder
from batcher.run import prepare
from batcher.run.api_check import check_api_first
from batcher.run.batch_run import STOP_INTERRUPTED, RunOptions, RunResult
from batcher.run.canary import check_canary, continue_command
from batcher.run.canary_run import CanaryStep, run_with_canary
from batcher.run.endpoint import Endpoint, check_endpoint, open_endpoint
from batcher.run.files import prepare_folder
from batcher.run.observer import RunObserver, RunProgress, to_settle
from batcher.run.recover import refuse_lost_batch
from batcher.run.reporting import check_reports, reporting
from batcher.run.rerun import (
    REJECT,
    RerunPlan,
    RerunResult,
    check_overrides,
    keys_needed,
    new_items,
    plan_rerun,
)
from batcher.run.setting_checks import check_limits
from batcher.run.signals import SignalsSeen, can_handle_signals, stop_on_signals
from batcher.run.summary import RunStats, RunSummary, exit_code
from batcher.run.webhooks import WebhookListen
from batcher.settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_CREATE_TIMEOUT,
    DEFAULT_DOUBT_LIMIT,
    DEFAULT_GRACE,
    DEFAULT_LEDGER_HOLD_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_OUTAGE_TOLERANCE,
    DEFAULT_POLL_TIMEOUT,
    DEFAULT_RENDER_RETRIES,
    DEFAULT_RENDER_TIMEOUT,
    DEFAULT_STALL_TIMEOUT,
    database_url,
)

log = logging.getLogger(__name__)

JobPath = str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class SendSettings:
    """The settings every sending command shares (the flags of `run`, `resume`, `worker`)."""

    concurrency: int = DEFAULT_CONCURRENCY
    rate: float | None = None
    budget: int | None = None
    out: Path | None = None
    wait: bool = True
    download: bool = True
    metadata: bool = True  # provenance chunks in PNGs (False: --no-metadata)
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # each API answer (--max-body-bytes)
    render_timeout: float = DEFAULT_RENDER_TIMEOUT  # seconds a render is followed
    gallery: bool = True  # refresh out/<batch>/index.html at the end (False: --no-gallery)
    render_retries: int = DEFAULT_RENDER_RETRIES
    ledger_hold: float = DEFAULT_LEDGER_HOLD_S  # seconds answers wait for the ledger
    batch_concurrency: int | None = None
    batch_rate: float | None = None
    preflight: bool = True
    # What `run` and `resume` requeue before sending; a joining worker takes the
    # batch as it is.
    resend_unconfirmed: bool = False
    retry_failed: bool = False
    # Surviving the night (README, "What survives what"):
    outage_tolerance: float = DEFAULT_OUTAGE_TOLERANCE
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    doubt_limit: int = DEFAULT_DOUBT_LIMIT
    create_timeout: float = DEFAULT_CREATE_TIMEOUT
    grace: float = DEFAULT_GRACE
    poll_timeout: float = DEFAULT_POLL_TIMEOUT
    # Reports for cron and monitoring (batcher.run.reporting).
    metrics_file: Path | None = None
    notify: tuple[str, ...] = ()
    canary: int | None = None  # send this many items first and report (batcher.run.canary)
    yes: bool = False  # after a canary that fits, go on without asking
    webhook: WebhookListen | None = None  # --webhook-listen, with its secret

    def __post_init__(self) -> None:
        check_canary(self.canary, wait=self.wait)
        for name in ("outage_tolerance", "stall_timeout", "create_timeout", "poll_timeout"):
            seconds = getattr(self, name)
            if not (math.isfinite(seconds) and seconds > 0):
                raise ConfigError(f"{name} must be a number of seconds above 0, not {seconds}")
        if not (math.isfinite(self.grace) and self.grace >= 0):
            raise ConfigError(f"grace must be 0 or more seconds, not {self.grace}")
        if self.doubt_limit < 1:
            raise ConfigError(f"doubt_limit must be at least 1, not {self.doubt_limit}")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError(f"rate must be above 0 requests per second, not {self.rate}")
        if self.budget is not None and self.budget < 0:
            raise ConfigError(f"budget must be 0 or more credits, not {self.budget}")
        if self.ledger_hold < 0:
            raise ConfigError(f"ledger_hold must be 0 or more seconds, not {self.ledger_hold}")
        if self.render_retries < 0:
            raise ConfigError(f"render_retries must be 0 or more, not {self.render_retries}")
        if self.max_image_bytes < 1:
            raise ConfigError(
                f"max_image_bytes must be at least 1 byte, not {self.max_image_bytes}"
            )
        check_limits(self)

    def run_options(self, *, joining: bool) -> RunOptions:
        return RunOptions(
            # A worker joining a --no-wait batch skips the poll pass: the renders
            # its peers just submitted are theirs to follow.
            poll_known_first=not (joining and not self.wait),
            concurrency=self.concurrency,
            rate=self.rate,
            wait=self.wait,
            download=self.download,
            metadata=self.metadata,
            out_dir=self.out,
            render_retries=self.render_retries,
            outage_tolerance=self.outage_tolerance,
            doubt_limit=self.doubt_limit,
            stall_timeout=self.stall_timeout,
            grace=self.grace,
            render_timeout=self.render_timeout,
            ledger_hold_s=self.ledger_hold,
            webhook=self.webhook,
        )

    def timeouts(self) -> Timeouts:
        return Timeouts(read=self.poll_timeout, create_deadline=self.create_timeout)


@dataclass(frozen=True, slots=True)
class Context:
    """Where a use case reads and writes: resolved once, flag over environment over default."""

    db_url: str
    catalog_path: str | None
    base_url: str | None
    environ: Mapping[str, str] | None
    observer: RunObserver
    handle_signals: bool

    @classmethod
    def resolve(
        cls,
        *,
        db: str | None,
        catalog: JobPath | None,
        base_url: str | None,
        environ: Mapping[str, str] | None,
        observer: RunObserver | None,
        handle_signals: bool,
    ) -> Context:
        env = os.environ if environ is None else environ
        return cls(
            db_url=database_url(db, env),
            catalog_path=os.fspath(catalog)
            if catalog is not None
            else env.get(CATALOG_ENV) or None,
            base_url=base_url,
            environ=environ,
            observer=observer or RunObserver(),
            handle_signals=handle_signals and can_handle_signals(),
        )

    def catalog(self) -> Catalog:
        return load_catalog(self.catalog_path)


class _Warnings:
    """One batch's warnings: shown live through the observer, kept for its summary."""

    def __init__(self, observer: RunObserver) -> None:
        self._observer = observer
        self.messages: list[str] = []

    def __call__(self, message: str | None) -> None:
        if message:
            self.messages.append(message)
            self._observer.warning(message)


async def run_jobs(
    jobs: Sequence[str],
    *,
    sandbox: bool,
    batch_name: str | None,
    settings: SendSettings,
    max_items: int | None = None,
    context: Context,
) -> tuple[RunSummary, ...]:
    """`batcher run`: every job file's batch, one after the other; stops after one
    that was interrupted by a signal."""
    if not jobs:
        raise ConfigError("no job file given")
    check_reports(settings.metrics_file, settings.notify)
    catalog = context.catalog()
    specs = prepare.load_jobs(jobs, catalog, batch_name=batch_name, max_items=max_items)
    observer = context.observer
    summaries: list[RunSummary] = []
    with open_endpoint(
        sandbox=sandbox,
        base_url=context.base_url,
        environ=context.environ,
        on_sandbox=observer.sandbox_started,
        webhook=settings.webhook,
    ) as endpoint:
        # Every output folder before the ledger is touched: a bad --out is bad
        # input, refused with nothing sent and nothing written.
        for spec in specs:
            prepare_folder(batch_folder(settings.out, spec.name))
        if settings.preflight:
            await check_api_first(endpoint.api)  # a bad key or URL: nothing written
        with await _open_ledger(context.db_url, create=True) as ledger:
            for spec in specs:
                # A batch the ledger lost (its manifest lists items): refused, nothing sent.
                refuse_lost_batch(ledger, spec.name, batch_folder(settings.out, spec.name))
            for spec in specs:
                warn = _Warnings(observer)
                for problem in spec.warnings:
                    warn(str(problem))
                prepared = await anyio.to_thread.run_sync(
                    functools.partial(
                        prepare.prepare_batch,
                        ledger,
                        spec,
                        catalog,
                        budget=settings.budget,
                        retry_failed=settings.retry_failed,
                        resend_unconfirmed=settings.resend_unconfirmed,
                    )
                )
                warn(check_endpoint(ledger, prepared.batch, endpoint))
                observer.prepared(prepared, display_url(context.db_url))
                summary = await drive(
                    ledger, endpoint, prepared.batch, catalog, settings, context, warn
                )
                summaries.append(summary)
                if summary.interrupted:
                    break
    return tuple(summaries)


async def serve_batch(
    name: str,
    *,
    sandbox: bool,
    requeue: bool,
    settings: SendSettings,
    context: Context,
) -> RunSummary:
    """`batcher resume` (`requeue`: retry what is retryable first) or `batcher worker`
    (join the batch as it is). The ledger must exist."""
    check_reports(settings.metrics_file, settings.notify)
    catalog = context.catalog()
    observer = context.observer
    warn = _Warnings(observer)
    with await _open_ledger(context.db_url, create=False) as ledger:
        batch = ledger.batch_named(name)
        prepare_folder(batch_folder(settings.out, batch.name))
        with open_endpoint(
            sandbox=sandbox,
            base_url=context.base_url,
            environ=context.environ,
            on_sandbox=observer.sandbox_started,
            offers_sandbox=requeue,  # resume has --sandbox, worker has not
            webhook=settings.webhook,
        ) as endpoint:
            # The local check first (sandbox or not); it records the endpoint only
            # on a batch that has none yet, which `run` now always records.
            warn(check_endpoint(ledger, batch, endpoint))
            if settings.preflight:
                await check_api_first(endpoint.api)  # a bad key or URL: nothing requeued
            if requeue:
                prepared = await anyio.to_thread.run_sync(
                    functools.partial(
                        prepare.resume_batch,
                        ledger,
                        name,
                        budget=settings.budget,
                        retry_failed=settings.retry_failed,
                        resend_unconfirmed=settings.resend_unconfirmed,
                    )
                )
                observer.prepared(prepared, display_url(context.db_url))
                batch = prepared.batch
            elif settings.budget is not None:
                ledger.set_budget(batch.id, settings.budget)
                batch = ledger.get_batch_by_id(batch.id)
            summary = await drive(
                ledger, endpoint, batch, catalog, settings, context, warn, joining=not requeue
            )
    return summary


async def _open_ledger(url: str, *, create: bool) -> Ledger:
    # Opening applies migrations: disk and database work, off the event loop.
    return await anyio.to_thread.run_sync(functools.partial(Ledger.open, url, create=create))


async def drive(
    ledger: Ledger,
    endpoint: Endpoint,
    batch: BatchRecord,
    catalog: Catalog,
    settings: SendSettings,
    context: Context,
    warn: _Warnings,
    *,
    joining: bool = False,
) -> RunSummary:
    """Run one worker on `batch` to its end and sum up the batch."""
    options = settings.run_options(joining=joining)
    batch = prepare.set_shared_limits(
        ledger, batch, rate=settings.batch_rate, concurrency=settings.batch_concurrency
    )
    reports = reporting(context.observer, settings.metrics_file, settings.notify)
    observer = reports or context.observer
    signals = SignalsSeen()
    started_at = utcnow()
    async with MagicHourClient(
        endpoint.api,
        concurrency=options.concurrency,
        max_download_bytes=settings.max_image_bytes,
        timeouts=settings.timeouts(),
        max_body_bytes=settings.max_body_bytes,
    ) as client:
        if settings.preflight:
            report = await prepare.preflight(client, ledger, batch, catalog)
            warn(report.warning)

        async def run_part(part: RunOptions) -> RunResult:
            run = prepare.new_run(ledger, client, batch, part)
            counts = await anyio.to_thread.run_sync(ledger.state_counts, batch.id)
            todo = to_settle(counts, wait=part.wait)
            if part.only_items is not None:  # a canary settles its own items only
                todo = min(todo, len(part.only_items) + counts.get("submitted", 0))
            progress = RunProgress(batch.name, todo, part.wait, run)
            return await _run_beside(progress, observer, signals, context.handle_signals)

        async def refresh(part: RunResult) -> Path | None:
            return await refresh_gallery(ledger, batch, settings, part, warn)

        if settings.canary is None:
            result = await run_part(options)
        else:
            step = CanaryStep(
                ledger,
                client,
                batch,
                catalog,
                settings.canary,
                settings.yes,
                observer,
                warn,
                batch_folder(settings.out, batch.name) if settings.download else None,
                continue_command(
                    batch.name,
                    context.db_url,
                    settings.out,
                    endpoint.label,
                    endpoint.api.base_url,
                    download=settings.download,
                ),
            )
            result = await run_with_canary(step, options, run_part, refresh)
    for notice in result.notices:
        warn(notice)
    gallery = await refresh_gallery(ledger, batch, settings, result, warn)
    finished_at = utcnow()
    summary = await anyio.to_thread.run_sync(
        functools.partial(
            _summarise,
            ledger,
            result,
            settings,
            started_at=started_at,
            finished_at=finished_at,
            code=exit_code(result, interrupted_code=signals.exit_code),
            db=display_url(context.db_url),
            warnings=tuple(warn.messages),
            gallery=gallery,
        )
    )
    observer.finished(summary)
    if reports is not None:
        await reports.ended(summary)
    return summary


async def refresh_gallery(
    ledger: Ledger,
    batch: BatchRecord,
    settings: SendSettings,
    result: RunResult,
    warn: Callable[[str | None], None],
) -> Path | None:
    """Rewrite the batch's gallery page at the end of a run that downloaded images
    (or whose page exists already: it would show old states), and return its path.
    Skipped with `--no-gallery`, `--no-download` and after an interruption (the
    user wants out). A failure is a warning: the images and the ledger are what
    the run was for."""
    if not (settings.download and settings.gallery) or result.stopped == STOP_INTERRUPTED:
        return None
    folder = batch_folder(settings.out, batch.name)
    if result.counters.images == 0 and not (folder / PAGE_NAME).exists():
        return None
    try:
        written = await anyio.to_thread.run_sync(
            functools.partial(write_gallery, ledger, batch.name, out_dir=folder)
        )
    except Exception as exc:  # any failure of the page is only a warning
        log.debug("gallery failed", exc_info=True)
        warn(f"the gallery was not refreshed: {exc}")
        return None
    return written.path


async def _run_beside(
    progress: RunProgress, observer: RunObserver, signals: SignalsSeen, handle_signals: bool
) -> RunResult:
    """`run.run()` with the observer and the signal handler beside it; the run's own
    error (a rejected key...) comes out as itself, not inside an ExceptionGroup."""
    run = progress.run
    result: RunResult | None = None
    failure: Exception | None = None
    async with anyio.create_task_group() as tasks:
        if handle_signals:
            tasks.start_soon(stop_on_signals, run, observer, signals)
        tasks.start_soon(observer.follow, progress)
        try:
            result = await run.run()
        except Exception as exc:
            failure = exc
        finally:
            tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure
    assert result is not None
    return result


def _summarise(
    ledger: Ledger,
    result: RunResult,
    settings: SendSettings,
    *,
    started_at: datetime,
    finished_at: datetime,
    code: int,
    db: str,
    warnings: tuple[str, ...],
    gallery: Path | None = None,
) -> RunSummary:
    [totals] = ledger.batch_summaries(result.batch)
    folder = batch_folder(settings.out, result.batch)
    return RunSummary(
        batch=result.batch,
        exit_code=code,
        items=totals.items,
        states=dict(result.states),
        credits_charged=totals.credits_charged,
        credits_refunded=totals.credits_refunded,
        credits_net=totals.credits_net,
        started_at=started_at,
        finished_at=finished_at,
        duration_s=(finished_at - started_at).total_seconds(),
        out=folder,
        manifest=folder / MANIFEST,
        gallery=gallery,
        stopped=result.stopped,
        stop_detail=result.stop_detail,
        unsent=result.unsent,
        waited=result.waited,
        downloaded=settings.download,
        counters=RunStats.of(result.counters),
        db=db,
        warnings=warnings,
    )


# --------------------------------------------------------------------------- rerun


async def rerun_batch(
    name: str,
    *,
    sandbox: bool,
    model: str | None,
    resolution: str | None,
    again: bool,
    dry_run: bool,
    confirm: Callable[[RerunPlan], bool] | None,
    settings: SendSettings,
    context: Context,
) -> RerunResult:
    """`batcher rerun BATCH --rejected`: plan a new item for each item with a rejected
    image; with `dry_run` stop there (nothing written, nothing sent); otherwise,
    once `confirm(plan)` says yes (None: yes), add them to the batch, each linked
    to the item it redoes, and run them like `run` (preflight, budget, progress).

    `settings.budget` is this rerun's own cap: the batch's budget becomes what
    it has spent so far plus that much.
    """
    catalog = context.catalog()
    check_overrides(catalog, model, resolution)
    observer = context.observer
    warn = _Warnings(observer)
    with await _open_ledger(context.db_url, create=False) as ledger:
        batch = ledger.batch_named(name)
        planned = await anyio.to_thread.run_sync(
            functools.partial(
                _plan_rerun,
                ledger,
                batch,
                catalog,
                model=model,
                resolution=resolution,
                again=again,
                budget=settings.budget,
            )
        )
        plan = planned.plan
        if dry_run or not plan.entries:
            return RerunResult(plan, dry_run=dry_run)
        if plan.other_pending:
            raise ConfigError(
                f"batch {batch.name!r} has {plan.other_pending} pending item(s) that are not "
                f"reruns; a rerun sends only its own: `batcher resume {batch.name}` sends "
                "those first. Nothing was sent"
            )
        folder = settings.out or gallery_folder(ledger, batch.name, None)
        prepare_folder(batch_folder(folder, batch.name))
        with open_endpoint(
            sandbox=sandbox,
            base_url=context.base_url,
            environ=context.environ,
            on_sandbox=observer.sandbox_started,
            webhook=settings.webhook,
        ) as endpoint:
            # The local check first (sandbox or not); it records the endpoint only
            # on a batch that has none yet, which `run` now always records.
            warn(check_endpoint(ledger, batch, endpoint))
            if settings.preflight:
                await check_api_first(endpoint.api)  # a bad key or URL: nothing requeued
            if confirm is not None and not await anyio.to_thread.run_sync(confirm, plan):
                return RerunResult(plan, declined=True)
            batch, added = await anyio.to_thread.run_sync(
                functools.partial(_add_reruns, ledger, batch, planned, catalog, settings.budget)
            )
            observer.prepared(
                prepare.PreparedBatch(batch, added, RequeueCounts()), display_url(context.db_url)
            )
            # A rerun's settings carry a canary when its caller asks for one:
            # drive() runs it for a rerun as for `run`.
            try:
                summary = await drive(
                    ledger,
                    endpoint,
                    batch,
                    catalog,
                    replace(settings, out=folder, budget=None),
                    context,
                    warn,
                )
            except InputError:
                # Refused before sending (preflight, a rejected key): take back
                # the reruns just added, so that nothing is left half-done.
                keys = [entry.key for entry in plan.new]
                await anyio.to_thread.run_sync(ledger.drop_unsent, batch.id, keys)
                raise
    return RerunResult(plan, summary)


@dataclass(frozen=True, slots=True)
class _PlannedRerun:
    plan: RerunPlan
    items: Mapping[str, ItemRecord]  # the rejected items and the batch's reruns, by key
    next_ordinal: int  # after the batch's last item


def _plan_rerun(
    ledger: Ledger,
    batch: BatchRecord,
    catalog: Catalog,
    *,
    model: str | None,
    resolution: str | None,
    again: bool,
    budget: int | None,
) -> _PlannedRerun:
    rejected = ledger.reviewed_images(batch.id, verdict=REJECT)
    links = ledger.redo_links(batch.id)
    wanted = keys_needed(rejected, links)
    found: dict[str, ItemRecord] = {}
    last = -1
    other_pending = 0
    for record in ledger.items(batch.id):
        last = max(last, record.ordinal)
        if record.key in wanted:
            found[record.key] = record
        elif record.state == "pending" and record.key not in links:
            other_pending += 1
    if budget is not None:
        budget_left: int | None = budget
    elif batch.budget is not None:
        budget_left = max(0, batch.budget - batch.credits_net - batch.credits_reserved)
    else:
        budget_left = None
    plan = plan_rerun(
        batch.name,
        rejected,
        found,
        links,
        catalog,
        model=model,
        resolution=resolution,
        again=again,
        other_pending=other_pending,
        budget_left=budget_left,
    )
    return _PlannedRerun(plan, found, last + 1)


def _add_reruns(
    ledger: Ledger,
    batch: BatchRecord,
    planned: _PlannedRerun,
    catalog: Catalog,
    budget: int | None,
) -> tuple[BatchRecord, SyncResult]:
    """The plan's new items in the ledger, linked to the items they redo; the batch's
    budget raised to this rerun's cap when one was given."""
    items = planned.items

    def estimate(settings: ItemSettings) -> tuple[int, bool]:
        value = catalog.estimate(settings)
        return value.credits, value.exact

    added = ledger.add_items(
        batch.id,
        new_items(planned.plan, items, planned.next_ordinal),
        estimate=estimate,
        project_name=lambda item: project_name(batch.name, item.key, item.settings),
        redo_of={entry.key: items[entry.redoes].id for entry in planned.plan.new},
    )
    if budget is not None:
        current = ledger.get_batch_by_id(batch.id)
        ledger.set_budget(batch.id, current.credits_net + current.credits_reserved + budget)
    return ledger.get_batch_by_id(batch.id), added
