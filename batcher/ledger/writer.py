"""Group commit for the runner's ledger writes.

Every state change is committed before the task that made it goes on, but the
many tasks of a run share transactions: while one group is being committed
(in a worker thread, so the event loop keeps serving HTTP), the next one
gathers. At 2,000 items a second that is a few hundred commits instead of
4,000, and each commit still happens before its caller proceeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import anyio.to_thread

from batcher.errors import LedgerError
from batcher.ledger.facade import Ledger
from batcher.ledger.values import LedgerOp

MAX_GROUP = 512


@dataclass(slots=True)
class _Waiter:
    op: LedgerOp
    done: anyio.Event = field(default_factory=anyio.Event)
    result: bool | int | None = None
    error: BaseException | None = None


class LedgerWriter:
    """`await writer.apply(op)` returns once `op` is committed."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._queue: list[_Waiter] = []
        self._wakeup = anyio.Event()
        self._thread = anyio.CapacityLimiter(1)
        self._closed = False

    async def apply(self, op: LedgerOp) -> bool | int | None:
        if self._closed:
            raise LedgerError("the ledger writer has stopped")
        waiter = _Waiter(op)
        self._queue.append(waiter)
        self._wakeup.set()
        # Shielded: once asked for, a state change is recorded even if the
        # caller is being cancelled, so the ledger never lags what was sent.
        with anyio.CancelScope(shield=True):
            await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    async def serve(self) -> None:
        """Commit groups until cancelled; whatever is queued then is still committed."""
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                # Let every task that is ready now add its operation first: the
                # fixed cost of a commit (fsync included) is then shared by more.
                await anyio.lowlevel.checkpoint()
                while self._queue:
                    await self._commit_next_group()
        finally:
            with anyio.CancelScope(shield=True):
                while self._queue:
                    await self._commit_next_group()
                self._closed = True

    async def _commit_next_group(self) -> None:
        group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
        ops: Sequence[LedgerOp] = [w.op for w in group]
        try:
            # A group that reached the database is always finished and reported.
            with anyio.CancelScope(shield=True):
                results = await anyio.to_thread.run_sync(
                    self._ledger.apply, ops, limiter=self._thread
                )
        except Exception as exc:
            for waiter in group:
                waiter.error = exc
                waiter.done.set()
            return
        for waiter, result in zip(group, results, strict=True):
            waiter.result = result
            waiter.done.set()
