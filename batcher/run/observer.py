"""What a caller may watch of a run, without the library printing anything.

The CLI passes an observer that draws the progress display and prints notes
and warnings (batcher.terminal.run_views); a library caller passes its own, or
none. Every method does nothing unless overridden.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batcher.run.batch_run import BatchRun, RunCounters
    from batcher.run.canary import CanaryReport
    from batcher.run.prepare import PreparedBatch
    from batcher.run.summary import RunSummary


@dataclass(frozen=True, slots=True)
class RunProgress:
    """What a progress display follows: the run's live counters and what they count to."""

    batch: str
    todo: int  # the items this run is expected to settle
    wait: bool  # renders are followed (done means complete, not only submitted)
    run: BatchRun

    @property
    def counters(self) -> RunCounters:
        return self.run.counters


def to_settle(states: Mapping[str, int], *, wait: bool) -> int:
    """The items a run starting on these ledger counts is expected to settle: those
    to send and, when it waits, those to follow. Items in doubt or failed before
    it began stay as they are (unless requeued, which made them pending), so a
    progress bar over this total reaches 100%."""
    return states.get("pending", 0) + (states.get("submitted", 0) if wait else 0)


class RunObserver:
    """Hooks called as a run goes; subclass and override the ones you need."""

    def sandbox_started(self, base_url: str) -> None:
        """`sandbox=True`: the emulator for this run listens at `base_url`."""

    def warning(self, message: str) -> None:
        """Something the user should know that does not stop the run (also kept in
        the summary's `warnings`)."""

    def prepared(self, prepared: PreparedBatch, db: str) -> None:
        """The batch is in the ledger at `db` (password hidden), its items synced and
        requeued; nothing has been sent yet."""

    async def follow(self, progress: RunProgress) -> None:
        """Runs beside the batch (read `progress.counters`) until cancelled when it ends."""

    def stopping(self, signal_name: str, *, abort: bool) -> None:
        """A signal arrived: the first stops sending and records creates in flight;
        the next (`abort`) gives up on those too (they become in doubt)."""

    def canary_finished(self, report: CanaryReport) -> None:
        """`canary=N`: the canary's items are done; `report` has their charges against
        the estimate, where their images are, and the rest re-estimated."""

    def confirm_canary(self, report: CanaryReport) -> bool | None:
        """Ask whether to send the rest after a canary that fits the budget and the
        balance: True to go on, False to stop, None when nobody can be asked (the
        default: the run stops and `report.continue_command` goes on later). Called
        between the canary and the rest, with nothing of the run going: it may
        block on the user."""
        return None

    def finished(self, summary: RunSummary) -> None:
        """The batch's run ended; `summary` is what the call returns for it."""
