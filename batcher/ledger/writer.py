"""Group commit for the runner's ledger writes, held through a ledger outage.

Every state change is committed before the task that made it goes on, but the
many tasks of a run share transactions: while one group is being committed
(in a worker thread, so the event loop keeps serving HTTP), the next one
gathers. At 2,000 items a second that is a few hundred commits instead of
4,000, and each commit still happens before its caller proceeds.

When the ledger cannot take a commit (a PostgreSQL restart, a SQLite lock past
the busy timeout, a full disk), the group is tried again with backoff for
`hold_s` seconds (`--ledger-hold`). Meanwhile no create is sent: a create's
intent (BeginSend) is committed before its request, and it waits in the queue
behind the group. Answers that arrive wait in memory. If the ledger comes back,
everything queued is committed in order and the run carries on. If it does not,
or if the SQLite file was removed, replaced or truncated under the run, the
writer gives up: every answer held, and every one that arrives after, goes to
the rescue file (batcher.ledger.rescue), fsynced; intents are refused (nothing
more is sent); and `on_lost` is told, with the one-line error the run ends with.
The run's other ledger calls (claims, heartbeats) go through `call`, which holds
them through the same outage.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from batcher.errors import LedgerError, LedgerLostError
from batcher.ledger.facade import Ledger
from batcher.ledger.identity import FileWatch
from batcher.ledger.models import utcnow
from batcher.ledger.rescue import RescueFile, entry, rescue_paths, worth_rescuing
from batcher.ledger.values import BeginSend, ItemRecord, LedgerOp, SendFailed
from batcher.settings import DEFAULT_LEDGER_HOLD_S as DEFAULT_HOLD_S

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_GROUP = 512
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0


@dataclass(slots=True)
class _Waiter:
    op: LedgerOp
    done: anyio.Event = field(default_factory=anyio.Event)
    result: bool | int | None = None
    error: BaseException | None = None


def holdable(exc: LedgerError) -> bool:
    """A ledger error to wait out: any but the writer having given up. Even one
    that waiting may not mend (a file made read-only or damaged under the run)
    ends in the rescue file, never in a lost answer."""
    return not isinstance(exc, LedgerLostError)


class LedgerWriter:
    """`await writer.apply(op)` returns once `op` is committed (or rescued, once the
    ledger is lost: see the module doc)."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        hold_s: float = DEFAULT_HOLD_S,
        batch: str = "",
        on_lost: Callable[[LedgerLostError], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._queue: list[_Waiter] = []
        self._wakeup = anyio.Event()
        self._thread = anyio.CapacityLimiter(1)
        self._closed = False
        self._hold_s = hold_s
        self._holding = True  # False once interrupted: give up at the next try
        self._batch = batch
        self._on_lost = on_lost
        self._keys: dict[int, str] = {}
        self._down_since: float | None = None
        self._lost: LedgerLostError | None = None
        target = ledger.target
        self._where = target.where
        self._rescue = RescueFile(rescue_paths(target))
        self._watch = FileWatch(target.path) if target.path is not None else None

    def on_lost(self, callback: Callable[[LedgerLostError], None]) -> None:
        self._on_lost = callback

    def stop_holding(self) -> None:
        """The run was interrupted: if the ledger is away, give up at the next try
        instead of holding on for the rest of --ledger-hold."""
        self._holding = False

    def know(self, items: Iterable[ItemRecord]) -> None:
        """Items this run may write about: a rescue line names the item by its key."""
        for item in items:
            self._keys[item.id] = item.key

    @property
    def lost(self) -> LedgerLostError | None:
        return self._lost

    # ------------------------------------------------------------------ writes

    async def apply(self, op: LedgerOp) -> bool | int | None:
        if self._lost is not None:
            return self._rescue_now([_Waiter(op)])[0]
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
        if self._lost is not None:
            self._rescue_now(group)
            return
        ops: Sequence[LedgerOp] = [w.op for w in group]
        # One timestamp for every try: a try that failed may have committed all the
        # same (its answer lost with the connection), and the next one can tell.
        at = self._ledger.now()
        attempt = 0
        while True:
            results: list[bool | int | None] | None = None
            try:
                # A group that reached the database is always finished and reported.
                with anyio.CancelScope(shield=True):
                    self.check_file()
                    results = await anyio.to_thread.run_sync(
                        functools.partial(self._ledger.apply, ops, at=at, again=attempt > 0),
                        limiter=self._thread,
                    )
                    # Committed into a file that is gone: nobody will read it again.
                    self.check_file()
            except LedgerLostError:
                self._rescue_now(group, committed=results)
                return
            except LedgerError as exc:
                if not holdable(exc):
                    self._fail(group, exc)
                    return
                try:
                    with anyio.CancelScope(shield=True):
                        await self._wait_out(exc, attempt)
                except LedgerLostError:
                    self._rescue_now(group)
                    return
                attempt += 1
                continue
            except Exception as exc:
                self._fail(group, exc)
                return
            self._back()
            assert results is not None
            for waiter, result in zip(group, results, strict=True):
                waiter.result = result
                waiter.done.set()
            return

    @staticmethod
    def _fail(group: Sequence[_Waiter], exc: BaseException) -> None:
        for waiter in group:
            waiter.error = exc
            waiter.done.set()

    # ------------------------------------------------------------------ other calls

    async def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A ledger call of the run other than its writes (claims, heartbeats, ...),
        held through an outage like the writes; raises LedgerLostError once lost."""
        attempt = 0
        while True:
            if self._lost is not None:
                raise self._lost
            self.check_file()
            try:
                result: T = await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs))
            except LedgerError as exc:
                if not holdable(exc):
                    raise
                await self._wait_out(exc, attempt)
                attempt += 1
                continue
            self._back()
            return result

    def check_file(self) -> None:
        """Give up if the SQLite file was removed, replaced or truncated under the run."""
        if self._lost is not None or self._watch is None:
            if self._lost is not None:
                raise self._lost
            return
        change = self._watch.check()
        if change is not None:
            self._lose(
                f"ledger {self._where} was {change} while this run was using it: sending stopped"
            )
            assert self._lost is not None
            raise self._lost

    # ------------------------------------------------------------------ outage

    async def _wait_out(self, exc: LedgerError, attempt: int) -> None:
        """Sleep before the next try, or give up once the ledger has been away for hold_s."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "%s; no new creates until it answers, answers held for up to %g s (--ledger-hold)",
                exc,
                self._hold_s,
                extra={"event": "ledger.unavailable", "hold_s": self._hold_s},
            )
        if self._lost is not None:
            raise self._lost
        left = self._down_since + self._hold_s - now if self._holding else 0.0
        if left <= 0:
            waited = (
                f"for {self._hold_s:g} s (--ledger-hold"
                if self._holding
                else "when the run was interrupted (stopped holding"
            )
            self._lose(
                f"ledger {self._where} unavailable {waited}; last error: {_reason(exc)}): "
                "sending stopped"
            )
            assert self._lost is not None
            raise self._lost
        await anyio.sleep(min(left, BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**attempt))

    def _back(self) -> None:
        if self._down_since is not None:
            log.warning(
                "ledger %s answers again after %.1f s; carrying on",
                self._where,
                time.monotonic() - self._down_since,
                extra={"event": "ledger.back"},
            )
            self._down_since = None

    def _lose(self, why: str) -> None:
        """Give up on the ledger: rescue what is queued, refuse what comes."""
        if self._lost is not None:
            return
        queued, self._queue = self._queue, []
        self._lost = LedgerLostError(why, where=self._where)
        self._rescue_now(queued)
        saved = self._rescue.path
        self._lost = LedgerLostError(
            f"{why}; every answer that arrived is saved in {saved}, which the next command "
            "that opens the ledger applies first",
            where=self._where,
        )
        if self._on_lost is not None:
            self._on_lost(self._lost)

    def _rescue_now(
        self, group: Sequence[_Waiter], *, committed: Sequence[bool | int | None] | None = None
    ) -> list[bool | int | None]:
        """Append the group's outcomes to the rescue file; intents are refused (False:
        nothing is sent). `committed`: the group's results, when it was
        committed into a file that is gone since; an intent recorded there is undone
        (the item is pending again: it was never sent)."""
        at = utcnow()
        ops = [w.op for w in group if worth_rescuing(w.op)]
        for waiter, accepted in zip(group, committed or (), strict=False):
            if isinstance(waiter.op, BeginSend) and accepted:
                op = waiter.op
                ops.append(SendFailed(op.item_id, op.batch_id, "pending", op.reserve))
        lines = [
            entry(op, ledger=self._where, batch=self._batch, key=self._key(op), at=at) for op in ops
        ]
        try:
            self._rescue.append(lines)
        except OSError as exc:
            # The last place left: the log, one line per answer.
            log.error(
                "the rescue file cannot be written (%s); the answers follow, one per line", exc
            )
            for line in lines:
                log.error("rescue %s", json.dumps(line, sort_keys=True))
        for waiter in group:
            # An intent refused like one with no room in the budget: the sender
            # hands the item back without a word (the run is stopping already).
            waiter.result = False if isinstance(waiter.op, BeginSend) else None
            waiter.done.set()
        return [w.result for w in group]

    def _key(self, op: LedgerOp) -> str | None:
        item_id = getattr(op, "item_id", None)
        return self._keys.get(item_id) if isinstance(item_id, int) else None


def _reason(exc: LedgerError) -> str:
    text = str(exc)
    prefix = f"ledger {exc.where}: " if exc.where else ""
    return text.removeprefix(prefix)
