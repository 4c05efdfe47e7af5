"""What becomes of a verified webhook event: stored once in the ledger, then
handed to the follower, which settles the render like a poll answer.

    receiver ──arrivals──▶ take(): ledger row (deduplicated) ──▶ follower.on_event
    other workers' rows ──▶ watch(): every SWEEP_S ───────────▶ follower.on_event

The ledger row is what makes an event received by any worker settle the
project for all of them (a shared PostgreSQL ledger, several workers, one
receiver or many behind a proxy): each worker's `watch()` reads the rows
added since its last look and hands on those for renders it follows. An event
for a project this worker does not follow (yet) waits in the follower: the
create's answer may still be on its way to the ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from batcher.client.magic_hour import project_from_event
from batcher.errors import BatcherError
from batcher.ledger import Ledger, StoredEvent
from batcher.run.follower import Follower
from batcher.run.state import in_thread
from batcher.run.webhook_verify import Event
from batcher.run.webhooks import Arrival, Refused

log = logging.getLogger(__name__)

T = TypeVar("T")

# How often a worker looks in the ledger for events other workers received.
SWEEP_S: Final = 1.0


class WebhookInbox:
    def __init__(
        self, ledger: Ledger, follower: Follower, *, batch_id: int, worker_id: str
    ) -> None:
        self._ledger = ledger
        self._follower = follower
        self._batch_id = batch_id
        self._worker_id = worker_id
        self._seen: set[str] = set()  # event keys handed on (or found stored) this run
        self._last_id: int | None = None
        self._taken: list[Arrival] = []  # taken from the receiver, not all stored yet

    async def take(self, arrivals: MemoryObjectReceiveStream[Arrival]) -> None:
        """Store and hand on what the receiver took, in order, after its answers."""
        async for first in arrivals:
            batch = self._taken = [first]
            while True:  # what came meanwhile goes in the same pass
                try:
                    batch.append(arrivals.receive_nowait())
                except anyio.WouldBlock:
                    break
            refused = sum(1 for arrival in batch if isinstance(arrival, Refused))
            if refused:
                await self._count_refused(refused)
                batch[:] = [arrival for arrival in batch if isinstance(arrival, Event)]
            while batch:
                arrival = batch[0]
                if isinstance(arrival, Event):
                    await self._store(arrival)
                del batch[0]  # stored: if the run ends meanwhile, drain() stores the rest

    async def drain(self, arrivals: MemoryObjectReceiveStream[Arrival]) -> None:
        """Store what is left once the run is over (taken but not stored yet, or
        not taken); nothing is handed on."""
        left, self._taken = self._taken, []
        while True:
            try:
                left.append(arrivals.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        refused = sum(1 for arrival in left if isinstance(arrival, Refused))
        if refused:
            await self._count_refused(refused)
        for arrival in left:
            if isinstance(arrival, Event):
                await self._store(arrival, hand_on=False)

    async def watch(self, sweep_s: float = SWEEP_S) -> None:
        """Hand on events that other workers stored, every `sweep_s`."""
        if self._last_id is None:
            self._last_id = await self._read(self._ledger.last_webhook_event_id, default=0)
        while True:
            await anyio.sleep(sweep_s)
            rows: list[StoredEvent] = await self._read(
                lambda: self._ledger.webhook_events_after(self._last_id or 0), default=[]
            )
            for row in rows:
                self._last_id = max(self._last_id or 0, row.id)
                self._hand_on_stored(row)

    # ------------------------------------------------------------------ internals

    async def _store(self, event: Event, *, hand_on: bool = True) -> None:
        key = f"{event.type}:{event.project_id}"
        try:
            await in_thread(
                self._ledger.record_webhook_event,
                event.type,
                event.project_id,
                event.payload,
                batch_id=self._batch_id,
                worker_id=self._worker_id,
            )
        except BatcherError as exc:
            # Still ours to act on: the render's own record is what counts.
            log.warning(
                "webhook event not stored: %s",
                exc,
                extra={"event": "webhooks.store_failed", "project_id": event.project_id},
            )
        if key in self._seen or not hand_on:
            return  # another delivery of an event already handed on
        self._seen.add(key)
        self._hand_on(event.type, event.project_id, event.payload)

    def _hand_on_stored(self, row: StoredEvent) -> None:
        key = f"{row.event_type}:{row.project_id}"
        if key in self._seen:
            return
        self._seen.add(key)
        self._hand_on(row.event_type, row.project_id, row.payload)

    def _hand_on(self, event_type: str, project_id: str, payload: object) -> None:
        assert isinstance(payload, dict)
        try:
            status = project_from_event(payload, project_id)
        except BatcherError as exc:
            log.info(
                "webhook event without a usable project (%s); polling it",
                exc,
                extra={"event": "webhooks.unusable", "project_id": project_id},
            )
            self._follower.look_now(project_id)
            return
        self._follower.on_event(status)

    async def _count_refused(self, count: int) -> None:
        try:
            await in_thread(
                self._ledger.record_webhook_rejected,
                batch_id=self._batch_id,
                worker_id=self._worker_id,
                count=count,
            )
        except BatcherError as exc:
            log.warning("refused webhook deliveries not counted in the ledger: %s", exc)

    async def _read(self, read: Callable[[], T], *, default: T) -> T:
        try:
            result: T = await in_thread(read)
        except BatcherError as exc:
            log.warning("webhook events not read from the ledger: %s", exc)
            return default
        return result
