"""What the commands do, as library calls a test can make without a terminal.

The CLI parses flags, builds these values, calls these functions and maps
their errors to exit codes; nothing here prints.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from batcher.client import retry
from batcher.client.magic_hour import Account, MagicHourClient
from batcher.errors import (
    ApiError,
    AuthError,
    ConfigError,
    JobFileError,
    PreflightError,
    Problem,
    TransportError,
)
from batcher.jobfile import JobSpec, collect_jobs
from batcher.jobfile.catalog import Catalog
from batcher.jobfile.items import ItemSettings, JobItem, project_name
from batcher.ledger import BatchRecord, Ledger, RequeueCounts, SyncResult
from batcher.run.batch_run import BatchRun, RunOptions
from batcher.settings import API_KEY_ENV, ApiConfig

log = logging.getLogger(__name__)

PREFLIGHT_LISTED = 10  # items named in a tier refusal; the rest are counted


def load_jobs(
    paths: Sequence[str | Path],
    catalog: Catalog,
    *,
    batch_name: str | None = None,
    max_items: int | None = None,
) -> list[JobSpec]:
    """Validate every job file; raise one JobFileError with every problem of every file,
    including two files that name the same batch. `max_items` is `--max-items`."""
    jobs, problems = collect_jobs(paths, catalog, batch_name=batch_name, max_items=max_items)
    names = Counter(job.name for job in jobs)
    clashing = sum(1 for job in jobs if names[job.name] > 1)
    for job in jobs:
        if names[job.name] > 1:
            problems.append(
                Problem(
                    job.path,
                    None,
                    "name",
                    f"batch {job.name!r} is named by more than one job file in this run",
                )
            )
            names[job.name] = 1  # report each clash once
    if problems:
        raise JobFileError(
            problems,
            files=len(paths),
            bad_files=len(paths) - len(jobs) + clashing,
            warnings=[warning for job in jobs for warning in job.warnings],
        )
    return jobs


def require_key(api: ApiConfig, *, sandbox_hint: bool = True) -> None:
    """ConfigError without a key; `sandbox_hint` for the commands that take --sandbox."""
    if not api.api_key:
        sandbox = ", or add --sandbox to try batcher against the local emulator"
        raise ConfigError(
            f"no API key: set {API_KEY_ENV} (export {API_KEY_ENV}=...)"
            + (sandbox if sandbox_hint else "")
        )


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    batch: BatchRecord
    sync: SyncResult
    requeued: RequeueCounts


def prepare_batch(
    ledger: Ledger,
    job: JobSpec,
    catalog: Catalog,
    *,
    budget: int | None,
    retry_failed: bool,
    resend_unconfirmed: bool,
) -> PreparedBatch:
    """Open (or create) the job's batch, add its new items and requeue what is retryable."""

    def estimate(settings: ItemSettings) -> tuple[int, bool]:
        value = catalog.estimate(settings)
        return value.credits, value.exact

    batch, _ = ledger.open_batch(
        job.name,
        job_path=str(Path(job.path).resolve()),
        job_hash=job.content_hash,
        budget=budget if budget is not None else job.budget,
        settings={},
    )

    def name_for(item: JobItem) -> str:
        return project_name(batch.name, item.key, item.settings)

    sync = ledger.sync_items(batch.id, job.items(), estimate=estimate, project_name=name_for)
    requeued = ledger.requeue(
        batch.id, retry_failed=retry_failed, resend_unconfirmed=resend_unconfirmed
    )
    return PreparedBatch(ledger.get_batch_by_id(batch.id), sync, requeued)


def resume_batch(
    ledger: Ledger,
    name: str,
    *,
    budget: int | None,
    retry_failed: bool,
    resend_unconfirmed: bool,
) -> PreparedBatch:
    batch = ledger.batch_named(name)
    if budget is not None:
        ledger.set_budget(batch.id, budget)
    requeued = ledger.requeue(
        batch.id, retry_failed=retry_failed, resend_unconfirmed=resend_unconfirmed
    )
    return PreparedBatch(ledger.get_batch_by_id(batch.id), SyncResult(0, 0, 0), requeued)


@dataclass(frozen=True, slots=True)
class PreflightReport:
    account: Account | None  # None when the account could not be read (a warning)
    estimate: int  # lower bound of what the pending items cost
    warning: str | None = None


async def preflight(
    client: MagicHourClient, ledger: Ledger, batch: BatchRecord, catalog: Catalog
) -> PreflightReport:
    """Refuse, before anything is sent, a run the account cannot pay for or may not run."""
    demand = ledger.pending_demand(batch.id)
    estimate = sum(row.estimate for row in demand)
    try:
        account = await retry.read(client.get_account)
    except AuthError:
        raise
    except (ApiError, TransportError) as exc:
        return PreflightReport(
            None, estimate, f"could not read the account, skipping checks: {exc}"
        )
    refused: list[str] = []
    refused_items = 0
    for row in demand:
        reason = catalog.tier_problem(row.settings, account.tier)
        if reason is not None:
            refused_items += row.items
            refused.extend(f"  {sample}: {reason}" for sample in row.samples)
    if refused_items:
        listed = refused[:PREFLIGHT_LISTED]
        more = refused_items - len(listed)
        if more > 0:
            listed.append(f"  ... and {more} more")
        raise PreflightError(
            f"batch {batch.name!r}: {refused_items} item(s) need more than the account's "
            f"{account.tier!r} tier allows; nothing was sent",
            listed,
        )
    if estimate > account.credits:
        raise PreflightError(
            f"batch {batch.name!r}: the pending items cost at least {estimate} credits but the "
            f"account has {account.credits}; nothing was sent "
            "(top up, lower the job, or skip this check with --no-preflight)"
        )
    return PreflightReport(account, estimate)


def new_run(
    ledger: Ledger, client: MagicHourClient, batch: BatchRecord, options: RunOptions
) -> BatchRun:
    """A worker for `batch`. Its ceilings are its own flags, lowered while it runs
    to its share of the batch's shared ceilings when those are set."""
    return BatchRun(ledger, client, batch, options)


def set_shared_limits(
    ledger: Ledger, batch: BatchRecord, *, rate: float | None, concurrency: int | None
) -> BatchRecord:
    """Store ceilings that every worker of the batch shares (given ones replace the
    stored ones; 0 clears one)."""
    if rate is None and concurrency is None:
        return batch
    new_rate = batch.shared_rate if rate is None else (rate or None)
    new_concurrency = batch.shared_concurrency if concurrency is None else (concurrency or None)
    ledger.set_shared_limits(batch.id, rate=new_rate, concurrency=new_concurrency)
    return ledger.get_batch_by_id(batch.id)
