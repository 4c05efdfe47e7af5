"""Feeding claims: this worker's place among a batch's workers, and its work.

- pages of pending items, claimed under a lease, into the send stream;
- renders created earlier (by a previous run or a dead worker), claimed and
  handed to the follower: all of them before anything is sent (resume's
  promise: fresh state and download URLs first), and later whatever comes free;
- the worker's heartbeat, which renews its leases;
- recovery of what dead workers left: their sends in doubt, their claims free;
- the batch's shared ceilings (`--batch-concurrency`, `--batch-rate`), split
  between the live workers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from batcher.client.limits import AdaptiveLimiter
from batcher.errors import LedgerLostError
from batcher.ledger import BatchRecord, ItemRecord, Ledger, WorkerRecord
from batcher.ledger.models import utcnow
from batcher.run.follower import Follower
from batcher.run.liveness import is_dead
from batcher.run.state import RunState, in_thread

log = logging.getLogger(__name__)

T = TypeVar("T")

# Items claimed per query: large pages make claims cheap per item, small ones
# leave more for other workers; a worker holds about this many unsent items.
CLAIM_PAGE_MAX: Final = 256
# How often a worker re-reads the batch's shared ceilings and counts its peers.
SHARE_REFRESH_S: Final = 2.0
# Nothing to claim while peers hold items: look again after this (at most).
IDLE_LOOK_S: Final = 5.0


class Feeder:
    """Claims the batch's work for this worker, and keeps the worker's claims alive."""

    def __init__(
        self,
        state: RunState,
        ledger: Ledger,
        batch: BatchRecord,
        worker: WorkerRecord,
        limiter: AdaptiveLimiter,
        follower: Follower,
        *,
        concurrency: int,
        claim_page: int,
        lease_s: float,
        heartbeat_s: float,
        wait: bool,
        poll_known_first: bool,
        only: frozenset[int] | None = None,
    ) -> None:
        self._state = state
        self._ledger = ledger
        self._batch = batch
        self._worker = worker
        self._limiter = limiter
        self._follower = follower
        self._page = claim_page or min(CLAIM_PAGE_MAX, max(16, 4 * concurrency))
        self._lease_s = lease_s
        self._heartbeat_s = heartbeat_s
        self._wait = wait
        self._poll_known_first = poll_known_first
        self._only = only  # a canary: the pending items it may send, no others

    # ------------------------------------------------------------------ joining

    async def join(self) -> None:
        """Settle what dead workers left, then register this worker."""
        await self._recover()
        await in_thread(self._ledger.register_worker, self._worker)

    async def leave(self) -> None:
        """This worker stops: its claims are handed back (their leases lapse instead
        if the ledger was lost)."""
        with contextlib.suppress(LedgerLostError):
            await self._call(self._ledger.stop_worker, self._worker.id)

    async def keep_alive(self) -> None:
        """Beat every heartbeat_s, renewing this worker's leases (until cancelled)."""
        counters = self._state.counters
        while True:
            await anyio.sleep(self._heartbeat_s)
            try:
                await self._call(
                    self._ledger.heartbeat,
                    self._worker.id,
                    lease_until=self._lease_until(),
                    in_flight=counters.in_flight + counters.rendering,
                )
            except LedgerLostError:
                return
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    async def share_ceilings(self) -> None:
        """Keep this worker to its share of the batch's shared ceilings, if any:
        N workers split them instead of multiplying them (until cancelled)."""
        try:
            await self._share_ceilings()
        except LedgerLostError:
            return

    async def _share_ceilings(self) -> None:
        own_ceiling, own_rate = self._limiter.ceiling, self._limiter.rate
        while True:
            batch = await self._call(self._ledger.get_batch_by_id, self._batch.id)
            if batch.shared_concurrency is not None or batch.shared_rate is not None:
                workers = max(
                    1,
                    await self._call(self._ledger.live_worker_count, self._batch.id, self._lease_s),
                )
                ceiling, rate = own_ceiling, own_rate
                if batch.shared_concurrency is not None:
                    ceiling = min(ceiling, max(1, batch.shared_concurrency // workers))
                if batch.shared_rate is not None:
                    share = batch.shared_rate / workers
                    rate = share if rate is None else min(rate, share)
                self._limiter.set_ceilings(ceiling, rate)
            await anyio.sleep(SHARE_REFRESH_S)

    # ------------------------------------------------------------------ feeding

    async def serve(self, sends: MemoryObjectSendStream[ItemRecord]) -> None:
        """Known renders first, then pages of pending items until none is left
        (here or with live peers) or sending stops."""
        state = self._state
        try:
            if self._poll_known_first:
                await self._adopt(first_look=True)
                await self._follower.first_looks_done()
            while not state.halted():
                items = await self._claim("pending")
                if not items:
                    if self._wait and await self._adopt(first_look=False):
                        continue
                    if not await self._others_hold_work():
                        break
                    await anyio.sleep(min(IDLE_LOOK_S, self._lease_s / 4))
                    continue
                state.hold(len(items))
                for index, item in enumerate(items):
                    if state.halted():
                        await state.release(items[index:])
                        break
                    await sends.send(item)
        except LedgerLostError:
            pass  # the writer told the state (fail): the run stops and raises it
        finally:
            state.feeding_done()

    async def _adopt(self, *, first_look: bool) -> int:
        """Claim renders created earlier and hand them to the follower; how many."""
        adopted = 0
        while True:
            items = await self._claim("submitted")
            if not items:
                return adopted
            charges = await self._call(
                self._ledger.project_charges, [i.project_id for i in items if i.project_id]
            )
            net = {project: charged - refunded for project, (charged, refunded) in charges.items()}
            self._state.hold(len(items))
            self._follower.adopt(items, net, first_look=first_look)
            adopted += len(items)

    async def _claim(self, state: str) -> list[ItemRecord]:
        """The next page of unclaimed items in `state`, now held by this worker
        (pending ones among the canary's, in a canary)."""
        items: list[ItemRecord] = await self._call(
            self._ledger.claim,
            self._batch.id,
            self._worker.id,
            states=[state],
            limit=self._page,
            lease_until=self._lease_until(),
            only=self._only if state == "pending" else None,
        )
        self._state.writer.know(items)
        return items

    async def _others_hold_work(self) -> bool:
        """Other live workers hold items that may come back (their lease may expire).
        Settles what dead workers left first, so their items are claimable now."""
        await self._recover()
        held: int = await self._call(self._ledger.held_elsewhere, self._batch.id, self._worker.id)
        return bool(held)

    async def _recover(self) -> None:
        me, lease_s = self._worker.id, self._lease_s
        await self._call(
            self._ledger.recover,
            self._batch.id,
            is_dead=lambda w: is_dead(w, me=me, lease_s=lease_s),
        )

    async def _call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A ledger call, held through a ledger outage like the run's writes."""
        return await self._state.writer.call(func, *args, **kwargs)

    def _lease_until(self) -> datetime:
        return utcnow() + timedelta(seconds=self._lease_s)
