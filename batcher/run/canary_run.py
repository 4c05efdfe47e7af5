"""`run --canary N`: send N items first, one of each kind before any repeat,
wait for them and their downloads, report what they cost, re-estimate the rest
at those charges, check it against the budget and the balance again, then go
on only if the caller says so (DESIGN.md, "Canary").

The choices and sums are `batcher.run.canary`'s; this module runs the two
parts (the canary, then the rest) through `run_part`, reads the ledger and the
account, and asks through the observer. It prints nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from batcher.client import retry
from batcher.client.magic_hour import MagicHourClient
from batcher.errors import ApiError, AuthError, TransportError
from batcher.jobfile.catalog import Catalog
from batcher.jobfile.pricing import Kind, Prices
from batcher.ledger import BatchRecord, Ledger
from batcher.run.batch_run import STOP_BUDGET, STOP_CREDITS, RunOptions, RunResult
from batcher.run.canary import (
    STOP_CANARY,
    STOP_CANARY_FAILED,
    CanaryReport,
    choose_canary,
    merge_counters,
    re_estimate,
)
from batcher.run.observer import RunObserver
from batcher.run.state import in_thread

log = logging.getLogger(__name__)

RunPart = Callable[[RunOptions], Awaitable[RunResult]]
Refresh = Callable[[RunResult], Awaitable[Path | None]]


@dataclass(frozen=True, slots=True)
class CanaryStep:
    """What a canary needs besides the run itself."""

    ledger: Ledger
    client: MagicHourClient
    batch: BatchRecord
    catalog: Catalog
    count: int  # N
    yes: bool  # --yes: go on without asking when the rest fits
    observer: RunObserver
    warn: Callable[[str | None], None]
    out: Path | None  # the images' folder (None: --no-download)
    continue_command: str


async def run_with_canary(
    step: CanaryStep, options: RunOptions, run_part: RunPart, refresh: Refresh
) -> RunResult:
    """The canary, its report, and the rest of the batch if it fits and the caller
    says yes; otherwise the canary's result, stopped with the reason."""
    ledger, batch = step.ledger, step.batch
    kinds = await in_thread(ledger.batch_kinds, batch.id, per_kind=step.count)
    firsts, repeats = choose_canary(kinds, step.count)
    chosen = firsts + repeats
    kind_of_id = {item_id: kind.kind for kind in kinds for item_id in kind.pending_ids}
    counts: Counter[Kind] = Counter(kind_of_id[item_id] for item_id in chosen)
    for kind in kinds:
        counts[kind.kind] += kind.complete
    before = Prices(step.catalog, await in_thread(ledger.learned_prices))

    # One of each kind first, the repeats after: concurrent creates of one part
    # reach the API in any order.
    first = await run_part(replace(options, only_items=frozenset(firsts)))
    if repeats and first.stopped is None:
        more = await run_part(replace(options, only_items=frozenset(repeats)))
        first = replace(more, counters=merge_counters(first.counters, more.counters))
    if first.stopped is not None:
        return first  # interrupted, out of budget...: the usual ending
    report = await _report(step, first, chosen, counts, before, refresh)
    step.observer.canary_finished(report)
    problem = report.problem
    if problem is not None:
        if report.failed:
            reason = STOP_CANARY_FAILED
        else:
            reason = STOP_BUDGET if report.over_budget else STOP_CREDITS
        return replace(first, stopped=reason, stop_detail=problem, unsent=report.remaining)
    if not report.remaining:
        return first
    if not step.yes and not _confirmed(step.observer, report):
        return replace(
            first,
            stopped=STOP_CANARY,
            stop_detail=f"paused after the canary; continue with: {report.continue_command}",
            unsent=report.remaining,
        )
    rest = await run_part(options)
    return replace(rest, counters=merge_counters(first.counters, rest.counters))


def _confirmed(observer: RunObserver, report: CanaryReport) -> bool:
    """The caller's answer; no answer (nobody to ask) is no. Asked on this thread,
    with nothing else of the run going: a Ctrl-C at a terminal's prompt reaches
    the prompt (a worker thread would leave the process waiting for its input)."""
    return bool(observer.confirm_canary(report))


async def _report(
    step: CanaryStep,
    first: RunResult,
    chosen: tuple[int, ...],
    counts: Counter[Kind],
    before: Prices,
    refresh: Refresh,
) -> CanaryReport:
    ledger, batch = step.ledger, step.batch
    items = await in_thread(ledger.items_by_id, chosen)
    kinds = await in_thread(ledger.batch_kinds, batch.id, per_kind=0)
    seen = await in_thread(ledger.learned_prices)
    fresh = await in_thread(ledger.get_batch_by_id, batch.id)
    budget_left = None
    if fresh.budget is not None:
        budget_left = max(0, fresh.budget - fresh.credits_net - fresh.credits_reserved)
    return CanaryReport(
        batch=batch.name,
        items=sum(counts.values()),
        kinds=re_estimate(kinds, counts, before, seen),
        failed=sum(1 for item in items if item.state != "complete"),
        out=step.out,
        images=tuple(path for item in items for path in item.files),
        gallery=await refresh(first),
        budget_left=budget_left,
        balance=await _balance(step),
        continue_command=step.continue_command,
    )


async def _balance(step: CanaryStep) -> int | None:
    """The account's credits now; None (and a warning) when they cannot be read."""
    try:
        account = await retry.read(step.client.get_account)
    except AuthError:
        raise
    except (ApiError, TransportError) as exc:
        step.warn(f"could not read the account after the canary, balance not checked: {exc}")
        return None
    return account.credits
