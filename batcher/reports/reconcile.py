"""`batcher reconcile`: ask the API again about every project the ledger knows.

A render can fail (and be refunded), or be charged more, after the run that
created it stopped following it: `--no-wait`, an interrupted run, a crash.
Reconcile polls every project id the ledger knows (a credit row, or an item
holding an id whose charge the create's answer did not tell), records every
difference between the project's current `credits_charged` and the ledger's
net for it as one credit row (a refund when lower, a charge when higher: a
surcharge, or the charge unknown until now; written in one transaction with
the read of the net, so running it twice records nothing twice), warns about
surcharges, and lists the items in doubt, whose project id was never learnt,
with the `name` that finds them in the Magic Hour web library.

It changes no item state and downloads nothing: that is `resume`'s job.

The polls run in a bounded pool of tasks over one client, each through an
AdaptiveLimiter (as the runner's requests are) and retried by the one retry
policy (`retry.read(..., paced=True)`): when the API answers 429, every poll
slows down, instead of each one burning its retries. A 401 stops everything
(AuthError, exit 2); any other failure of one project is reported and the
others go on.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import anyio
import anyio.to_thread

from batcher.client import retry
from batcher.client.limits import AdaptiveLimiter
from batcher.client.magic_hour import ProjectStatus
from batcher.errors import ApiError, AuthError, BatcherError, TransportError
from batcher.ledger import BatchRecord, ChargeSeen, DoubtfulItem, KnownProject, Ledger
from batcher.settings import SANDBOX_ENDPOINT

log = logging.getLogger(__name__)

# A batch run with `run --sandbox` talked to an emulator that lived only for
# that run (see batcher/run/endpoint.py): its project ids mean nothing to any
# server now.
EPHEMERAL_ENDPOINT: Final = SANDBOX_ENDPOINT
NOT_FOUND: Final = 404


class ProjectSource(Protocol):
    """What reconcile needs of the API client."""

    @property
    def base_url(self) -> str: ...

    async def get_project(self, project_id: str) -> ProjectStatus: ...


@dataclass(frozen=True, slots=True)
class RefundFound:
    batch: str
    item_key: str
    project_id: str
    credits: int
    status: str  # the project's status when polled


@dataclass(frozen=True, slots=True)
class ChargeFound:
    """A charge the ledger had not recorded: a surcharge, or a charge the create's
    answer did not tell (`first`)."""

    batch: str
    item_key: str
    project_id: str
    credits: int
    first: bool


@dataclass(frozen=True, slots=True)
class ProjectProblem:
    """A project reconcile could not settle: unknown to the API, unreadable, or at odds."""

    batch: str
    item_key: str
    project_id: str
    detail: str


@dataclass(frozen=True, slots=True)
class SkippedBatch:
    id: int
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    batches: tuple[str, ...]  # reconciled (polled) batches, in ledger order
    projects_polled: int
    statuses: Mapping[str, int]  # project status -> how many answered with it
    refunds: tuple[RefundFound, ...]
    not_found: tuple[ProjectProblem, ...]  # 404: the API does not know the id
    errors: tuple[ProjectProblem, ...]  # no usable answer after retries
    mismatches: tuple[ProjectProblem, ...]  # the API's credits differ from the ledger's net
    in_doubt: tuple[DoubtfulItem, ...]
    skipped: tuple[SkippedBatch, ...] = ()
    warnings: tuple[str, ...] = ()
    charges: tuple[ChargeFound, ...] = ()

    @property
    def credits_charged(self) -> int:
        """Credits charged that the ledger learnt from this reconcile."""
        return sum(charge.credits for charge in self.charges)

    @property
    def credits_refunded(self) -> int:
        return sum(refund.credits for refund in self.refunds)

    @property
    def complete(self) -> bool:
        """Every known project got an answer (404 counts as one)."""
        return not self.errors


@dataclass
class _Tally:
    """What the poll tasks found; mutated only from the event loop thread."""

    polled: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    refunds: list[RefundFound] = field(default_factory=list)
    charges: list[ChargeFound] = field(default_factory=list)
    not_found: list[ProjectProblem] = field(default_factory=list)
    errors: list[ProjectProblem] = field(default_factory=list)
    mismatches: list[ProjectProblem] = field(default_factory=list)
    fatal: BatcherError | None = None  # stops every poll: a rejected key, an unusable ledger


def select_batches(
    ledger: Ledger, batch_name: str | None, endpoint: str
) -> tuple[list[BatchRecord], list[SkippedBatch], list[str]]:
    """The batches to poll, those skipped (and why), and warnings about the endpoint."""
    if batch_name is not None:
        candidates = [ledger.batch_named(batch_name)]
    else:
        candidates = [
            batch
            for batch in (ledger.get_batch(name) for name in ledger.batch_names())
            if batch is not None
        ]
    chosen: list[BatchRecord] = []
    skipped: list[SkippedBatch] = []
    warnings: list[str] = []
    for batch in candidates:
        recorded = batch.settings.get("endpoint")
        if recorded == EPHEMERAL_ENDPOINT:
            skipped.append(
                SkippedBatch(
                    batch.id,
                    batch.name,
                    "run with --sandbox: its emulator is gone, so are its projects",
                )
            )
            continue
        if isinstance(recorded, str) and recorded.rstrip("/") != endpoint.rstrip("/"):
            warnings.append(
                f"batch {batch.name!r} was run against {recorded}, now polling {endpoint}: "
                "its projects may be unknown there"
            )
        chosen.append(batch)
    return chosen, skipped, warnings


async def reconcile(
    ledger: Ledger,
    client: ProjectSource,
    batch_name: str | None = None,
    *,
    concurrency: int,
    limiter: AdaptiveLimiter | None = None,
) -> ReconcileReport:
    """Poll every known project of one batch (or all), record late refunds, list doubts.

    At most `concurrency` polls are in flight, fewer while the API answers 429
    (`limiter`: one of your own, e.g. to share it; default a new one).
    Raises AuthError when the API rejects the key, ConfigError for an unknown batch,
    LedgerError when a refund cannot be written.
    """
    chosen, skipped, warnings = await anyio.to_thread.run_sync(
        select_batches, ledger, batch_name, client.base_url
    )
    projects: list[KnownProject] = []
    for batch in chosen:
        projects.extend(await anyio.to_thread.run_sync(ledger.known_projects, batch.id))
    log.info(
        "polling %d project(s) of %d batch(es)",
        len(projects),
        len(chosen),
        extra={"event": "reconcile.start", "projects": len(projects)},
    )
    tally = _Tally()
    workers = max(1, concurrency)
    paced = _PacedSource(client, limiter or AdaptiveLimiter(workers))
    await _poll_all(ledger, paced, iter(projects), tally, workers)
    if tally.fatal is not None:
        raise tally.fatal
    # Every selected batch, skipped ones too: their doubtful items are still in doubt.
    batch_ids = [batch.id for batch in chosen] + [batch.id for batch in skipped]
    in_doubt = await anyio.to_thread.run_sync(ledger.doubtful_items, batch_ids)
    surcharges = [charge for charge in tally.charges if not charge.first]
    if surcharges:
        example = surcharges[0]
        warnings.append(
            f"{len(surcharges)} project(s) were charged more than the ledger knew "
            f"({sum(c.credits for c in surcharges)} credits; e.g. {example.item_key}, "
            f"project {example.project_id}: +{example.credits}); recorded as charges"
        )
    return ReconcileReport(
        batches=tuple(batch.name for batch in chosen),
        projects_polled=tally.polled,
        statuses=dict(sorted(tally.statuses.items())),
        refunds=tuple(tally.refunds),
        not_found=tuple(tally.not_found),
        errors=tuple(tally.errors),
        mismatches=tuple(tally.mismatches),
        in_doubt=tuple(in_doubt),
        skipped=tuple(skipped),
        warnings=tuple(warnings),
        charges=tuple(tally.charges),
    )


class _PacedSource:
    """Polls through the limiter, under the retry policy."""

    def __init__(self, client: ProjectSource, limiter: AdaptiveLimiter) -> None:
        self._client = client
        self._limiter = limiter

    async def get_project(self, project_id: str) -> ProjectStatus:
        status: ProjectStatus = await retry.read(
            lambda: self._limiter.call(lambda: self._client.get_project(project_id)),
            paced=True,
            about={"project_id": project_id},
        )
        return status


async def _poll_all(
    ledger: Ledger,
    client: _PacedSource,
    queue: Iterator[KnownProject],
    tally: _Tally,
    workers: int,
) -> None:
    """`workers` tasks share one iterator: a fixed pool, not one task per project."""
    async with anyio.create_task_group() as tasks:

        async def worker() -> None:
            # next() on a shared iterator is safe: tasks only switch at awaits.
            for project in queue:
                try:
                    await _settle(ledger, client, project, tally)
                except BatcherError as exc:
                    # _settle keeps one project's API trouble to itself; what
                    # reaches here (401, a ledger error) would stop every other
                    # task too. Stop them now and re-raise outside the task
                    # group, as itself rather than inside an ExceptionGroup.
                    if tally.fatal is None:
                        tally.fatal = exc
                    tasks.cancel_scope.cancel()
                    return

        for _ in range(workers):
            tasks.start_soon(worker)


async def _settle(
    ledger: Ledger, client: _PacedSource, project: KnownProject, tally: _Tally
) -> None:
    try:
        status = await client.get_project(project.project_id)
    except AuthError:
        raise
    except ApiError as exc:
        tally.polled += 1
        problem = ProjectProblem(project.batch, project.item_key, project.project_id, str(exc))
        if exc.status == NOT_FOUND:
            tally.not_found.append(problem)
        else:
            tally.errors.append(problem)
        return
    except TransportError as exc:
        tally.polled += 1
        tally.errors.append(
            ProjectProblem(project.batch, project.item_key, project.project_id, str(exc))
        )
        return
    tally.polled += 1
    tally.statuses[status.status] += 1
    if status.credits_charged is None:
        return  # nothing usable said about the charge: the ledger keeps what it has
    change = await anyio.to_thread.run_sync(
        ledger.record_charge_seen,
        ChargeSeen(project.item_id, project.batch_id, project.project_id, status.credits_charged),
    )
    if change < 0:
        tally.refunds.append(
            RefundFound(project.batch, project.item_key, project.project_id, -change, status.status)
        )
    elif change > 0:
        tally.charges.append(
            ChargeFound(
                project.batch,
                project.item_key,
                project.project_id,
                change,
                first=not project.charge_known,
            )
        )
    if change:
        log.debug(
            "credit change recorded",
            extra={
                "event": "reconcile.credit",
                "project_id": project.project_id,
                "credits": change,
            },
        )


def excerpt(text: str, length: int = 60) -> str:
    """A prompt on one line, cut to `length` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= length else flat[: length - 1] + "…"


def in_doubt_rows(items: Sequence[DoubtfulItem]) -> list[dict[str, object]]:
    """The items in doubt as plain JSON-ready rows."""
    return [
        {
            "batch": item.batch,
            "key": item.key,
            "name": item.project_name,
            "prompt": excerpt(item.prompt),
            "model": item.model,
            "attempts": item.attempts,
            "sent_at": item.sent_at.isoformat().replace("+00:00", "Z") if item.sent_at else None,
        }
        for item in items
    ]


def reconcile_json(report: ReconcileReport) -> dict[str, object]:
    """`reconcile --json`."""

    def problems(rows: Sequence[ProjectProblem], label: str) -> list[dict[str, str]]:
        return [
            {"batch": p.batch, "key": p.item_key, "project_id": p.project_id, label: p.detail}
            for p in rows
        ]

    return {
        "batches": list(report.batches),
        "projects_polled": report.projects_polled,
        "statuses": dict(report.statuses),
        "refunds_found": len(report.refunds),
        "charges_found": len(report.charges),
        "credits_charged": report.credits_charged,
        "credits_refunded": report.credits_refunded,
        "refunds": [
            {
                "batch": r.batch,
                "key": r.item_key,
                "project_id": r.project_id,
                "credits": r.credits,
                "status": r.status,
            }
            for r in report.refunds
        ],
        "projects_not_found": problems(report.not_found, "error"),
        "poll_errors": problems(report.errors, "error"),
        "mismatches": problems(report.mismatches, "detail"),
        "items_in_doubt": in_doubt_rows(report.in_doubt),
        "skipped_batches": [{"name": s.name, "reason": s.reason} for s in report.skipped],
        "warnings": list(report.warnings),
    }
