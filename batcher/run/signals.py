"""SIGINT, SIGTERM and SIGHUP during a run: the first stops it cleanly, the second aborts.

First signal: send nothing more, let the creates already on the wire answer and
record them, then end (exit 130 for SIGINT, 143 for SIGTERM, as cron and
systemd expect; SIGHUP, a closed terminal or a dropped ssh session, is taken
as SIGTERM: 143). Second, or the first's grace running out (`--grace`,
batcher.run.grace): give up on those creates too; they are recorded as in
doubt. Either way the ledger is consistent and `resume` picks up.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import anyio

from batcher.errors import EXIT_INTERRUPTED, EXIT_TERMINATED
from batcher.run.batch_run import BatchRun
from batcher.run.grace import abort_after
from batcher.run.observer import RunObserver

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_CODES: Final = {
    signal.SIGINT: EXIT_INTERRUPTED,
    signal.SIGTERM: EXIT_TERMINATED,
    signal.SIGHUP: EXIT_TERMINATED,
}


@dataclass
class SignalsSeen:
    first: signal.Signals | None = None

    @property
    def exit_code(self) -> int:
        """The exit code the first signal asks for (130 when none came: a stop by hand)."""
        return EXIT_CODES.get(self.first, EXIT_INTERRUPTED) if self.first else EXIT_INTERRUPTED


def can_handle_signals() -> bool:
    """Signal handlers can only be installed from the main thread."""
    return threading.current_thread() is threading.main_thread()


def _in_flight(run: BatchRun) -> Callable[[], int]:
    counters = run.counters
    return lambda: counters.in_flight


async def stop_on_signals(run: BatchRun, observer: RunObserver, seen: SignalsSeen) -> None:
    """Until cancelled: the first SIGINT/SIGTERM/SIGHUP interrupts `run` and starts
    its grace period; the next, or the grace's end, aborts it.

    The handlers that were there before come back afterwards: the event loop
    would otherwise leave the defaults (SIGTERM: die on the spot) behind it.
    """
    before = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    try:
        with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async with anyio.create_task_group() as grace:
                async for received in signals:
                    number = signal.Signals(received)
                    if seen.first is None:
                        seen.first = number
                        observer.stopping(number.name, abort=False)
                        run.interrupt()
                        grace.start_soon(abort_after, run.options.grace, _in_flight(run), run.abort)
                    else:
                        observer.stopping(number.name, abort=True)
                        run.abort()
    finally:
        for number, handler in before.items():
            if handler is not None:
                signal.signal(number, handler)
