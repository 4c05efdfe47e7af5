"""What a run of one batch ends with: the summary `run`, `resume` and `worker`
return (and print with `--json`), and the exit code it means.

The batch's figures (items, states, credits) are the ledger's, summed over
every run of the batch; what this one run did is in `counters`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batcher.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK
from batcher.run.batch_run import STOP_INTERRUPTED, RunCounters, RunResult
from batcher.run.canary import STOP_CANARY


@dataclass(frozen=True, slots=True)
class RunStats:
    """What this one run did, frozen when it ended."""

    sent: int  # create requests sent
    created: int
    complete: int
    failed: int
    unconfirmed: int
    throttled: int  # 429 answers
    polls: int
    images: int
    credits_charged: int
    credits_refunded: int
    elapsed: float  # seconds

    @classmethod
    def of(cls, counters: RunCounters) -> RunStats:
        return cls(
            sent=counters.sent,
            created=counters.created,
            complete=counters.complete,
            failed=counters.failed,
            unconfirmed=counters.unconfirmed,
            throttled=counters.throttled,
            polls=counters.polls,
            images=counters.images,
            credits_charged=counters.credits_charged,
            credits_refunded=counters.credits_refunded,
            elapsed=counters.elapsed,
        )


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One batch's run. The first fields are the `--json` document of DESIGN.md."""

    batch: str
    exit_code: int
    items: int
    states: Mapping[str, int]
    credits_charged: int
    credits_refunded: int
    credits_net: int
    started_at: datetime
    finished_at: datetime
    duration_s: float
    out: Path  # the batch's folder: images and the manifest
    manifest: Path
    gallery: Path | None
    # Beyond the JSON document: why sending stopped, what this run did, where.
    stopped: str | None  # a STOP_* reason when sending stopped early
    stop_detail: str | None
    unsent: int  # pending items left when sending stopped
    waited: bool  # renders were followed (not --no-wait)
    downloaded: bool  # images were saved (not --no-download)
    counters: RunStats
    db: str  # the ledger's URL, any password hidden
    warnings: tuple[str, ...] = ()

    @property
    def succeeded(self) -> bool:
        return self.exit_code == EXIT_OK

    @property
    def interrupted(self) -> bool:
        return self.stopped == STOP_INTERRUPTED


def exit_code(result: RunResult, *, interrupted_code: int = EXIT_INTERRUPTED) -> int:
    """0 every item complete (or submitted without waiting), or paused after a
    canary nobody said yes to; 1 anything failed, in doubt or left unsent;
    `interrupted_code` (130 SIGINT, 143 SIGTERM) when stopped by a signal."""
    if result.stopped == STOP_INTERRUPTED:
        return interrupted_code
    if result.stopped == STOP_CANARY:
        return EXIT_OK  # the canary did what was asked; the rest waits for a yes
    return EXIT_OK if result.succeeded else EXIT_FAILURE


def worst_exit_code(summaries: tuple[RunSummary, ...] | list[RunSummary]) -> int:
    """The exit code of several batches run one after the other: the worst of them."""
    return max((summary.exit_code for summary in summaries), default=EXIT_OK)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def summary_json(summary: RunSummary) -> dict[str, Any]:
    """The `--json` document of `run`, `resume` and `worker` (DESIGN.md, Nightly operations)."""
    return {
        "batch": summary.batch,
        "exit_code": summary.exit_code,
        "items": summary.items,
        "states": dict(summary.states),
        "credits_charged": summary.credits_charged,
        "credits_refunded": summary.credits_refunded,
        "credits_net": summary.credits_net,
        "started_at": _iso(summary.started_at),
        "finished_at": _iso(summary.finished_at),
        "duration_s": round(summary.duration_s, 3),
        "out": str(summary.out),
        "manifest": str(summary.manifest),
        "gallery": None if summary.gallery is None else str(summary.gallery),
    }
