"""One worker on one batch: send every pending item, follow each render, save the images.

    Feeder ──claims──▶ send stream ──▶ Sender xN ──create──▶ API
       │                                   │ accepted
       │ renders created earlier           ▼
       └──────────────────────────────▶ Follower ──poll, download──▶ API
                                           │ failed and refunded: send again
                                           └──────────────▶ send stream

The parts (batcher.run.feeder, .sender, .follower) share only a RunState
(counters, holding, stopping, the ledger writer, the manifest), the request
limiter and the render gate. This module builds them, starts them, and stops
them when the work is done, interrupted or failed.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

from batcher.client.limits import AdaptiveLimiter
from batcher.errors import LedgerLostError
from batcher.folders import SENT_LOG, batch_folder
from batcher.ledger import BatchRecord, ItemRecord, Ledger, LedgerWriter
from batcher.run.breaker import DoubtBreaker
from batcher.run.feeder import Feeder
from batcher.run.files import Manifest, prepare_folder
from batcher.run.follower import Follower
from batcher.run.inbox import WebhookInbox
from batcher.run.liveness import new_worker
from batcher.run.outage import Outage
from batcher.run.pacing import RenderGate
from batcher.run.sender import Sender
from batcher.run.stall import watch_stall
from batcher.run.state import (
    STOP_AUTH,
    STOP_BUDGET,
    STOP_CREDITS,
    STOP_DOUBT,
    STOP_INTERRUPTED,
    STOP_OUTPUT,
    STOP_STALLED,
    STOP_UNREACHABLE,
    ImageApi,
    RunCounters,
    RunState,
    in_thread,
)
from batcher.run.webhooks import (
    UNBOUNDED,
    Arrival,
    WebhookListen,
    WebhookReceiver,
    listening_socket,
)
from batcher.settings import (
    DEFAULT_DOUBT_LIMIT,
    DEFAULT_GRACE,
    DEFAULT_LEDGER_HOLD_S,
    DEFAULT_OUTAGE_TOLERANCE,
    DEFAULT_RENDER_TIMEOUT,
    DEFAULT_STALL_TIMEOUT,
    HEARTBEAT_S,
    LEASE_S,
)

__all__ = [
    "STOP_AUTH",
    "STOP_BUDGET",
    "STOP_CREDITS",
    "STOP_DOUBT",
    "STOP_INTERRUPTED",
    "STOP_OUTPUT",
    "STOP_STALLED",
    "STOP_UNREACHABLE",
    "BatchRun",
    "ImageApi",
    "RunCounters",
    "RunOptions",
    "RunResult",
]

# Sender tasks per request slot (--concurrency): a sender spends part of each
# item committing its outcome after giving its slot back.
SENDERS_PER_SLOT = 1.5
# Open states: while any is left, the batch is not finished.
UNFINISHED = ("pending", "sending", "submitted")
# At the end, webhook deliveries already answered get this long to be stored.
DRAIN_S = 2.0


@dataclass(frozen=True, slots=True)
class RunOptions:
    concurrency: int = 8
    rate: float | None = None
    wait: bool = True
    download: bool = True
    metadata: bool = True  # False: images stay byte for byte as downloaded (--no-metadata)
    out_dir: Path | None = None
    render_retries: int = 1
    render_timeout: float = DEFAULT_RENDER_TIMEOUT  # then left `submitted`, reported
    claim_page: int = 0  # 0: four times the concurrency, at most feeder.CLAIM_PAGE_MAX
    lease_s: float = LEASE_S
    heartbeat_s: float = HEARTBEAT_S
    ledger_hold_s: float = (
        DEFAULT_LEDGER_HOLD_S  # --ledger-hold: how long answers wait for the ledger
    )
    # Poll every known render before sending (resume's promise). A worker joining
    # a --no-wait batch skips it: the renders its peers just submitted are theirs.
    poll_known_first: bool = True
    # Surviving the night (README, "What survives what"):
    outage_tolerance: float = DEFAULT_OUTAGE_TOLERANCE  # seconds the API may be down
    doubt_limit: int = DEFAULT_DOUBT_LIMIT  # creates in doubt in a row before sending stops
    stall_timeout: float = DEFAULT_STALL_TIMEOUT  # seconds without progress before stopping
    grace: float = DEFAULT_GRACE  # after a first signal, seconds before creates in flight are cut
    # A canary: send only these pending items (ids); None sends every pending one.
    only_items: frozenset[int] | None = None
    # Serve the account's webhook during the run (--webhook-listen); polls become
    # the fallback for lost events.
    webhook: WebhookListen | None = None


@dataclass(frozen=True, slots=True)
class RunResult:
    batch: str
    states: Mapping[str, int]
    counters: RunCounters
    stopped: str | None  # STOP_* when sending stopped early
    stop_detail: str | None
    out_dir: Path | None
    unsent: int  # pending items left when sending stopped
    waited: bool  # renders were followed (not --no-wait)
    notices: tuple[str, ...] = ()  # odd answers met (batcher.run.notices), for the summary

    @property
    def succeeded(self) -> bool:
        """Every item complete, or submitted when the run did not wait for renders."""
        if self.stopped is not None:
            return False
        open_states = ["pending", "sending", "unconfirmed", "failed"]
        if self.waited:
            open_states.append("submitted")
        return not any(self.states.get(state, 0) for state in open_states)


class BatchRun:
    """One worker on one batch. Create it, then `await run()`; `interrupt()`,
    `abort()` and `halt_sending()` may be called from other tasks (signal
    handlers, tests)."""

    def __init__(
        self, ledger: Ledger, client: ImageApi, batch: BatchRecord, options: RunOptions
    ) -> None:
        self.ledger = ledger
        self.batch = batch
        self.options = options
        self.out_dir = batch_folder(options.out_dir, batch.name) if options.download else None
        writer = LedgerWriter(ledger, hold_s=options.ledger_hold_s, batch=batch.name)
        folder = batch_folder(options.out_dir, batch.name)
        self.state = RunState(writer, Manifest(folder), Manifest(folder, SENT_LOG))
        writer.on_lost(self.state.fail)
        self.counters = self.state.counters
        self.limiter = AdaptiveLimiter(options.concurrency, rate=options.rate)
        self.gate = gate = RenderGate()
        worker = new_worker(batch.id)
        self.outage = Outage(self.state, options.outage_tolerance)
        self.follower = Follower(
            self.state,
            client,
            self.limiter,
            gate,
            self.outage,
            concurrency=options.concurrency,
            wait=options.wait,
            render_retries=options.render_retries,
            render_timeout=options.render_timeout,
            out_dir=self.out_dir,
            batch_name=batch.name,
            metadata=options.metadata,
            listening=options.webhook is not None and options.wait,
        )
        self.inbox = WebhookInbox(ledger, self.follower, batch_id=batch.id, worker_id=worker.id)
        self.webhook_port: int | None = None  # where the receiver listens, once it does
        self.sender = Sender(
            self.state,
            client,
            self.limiter,
            gate,
            self.follower,
            self.outage,
            DoubtBreaker(self.state, options.doubt_limit),
            batch=batch,
            worker_id=worker.id,
            wait=options.wait,
        )
        self.feeder = Feeder(
            self.state,
            ledger,
            batch,
            worker,
            self.limiter,
            self.follower,
            concurrency=options.concurrency,
            claim_page=options.claim_page,
            lease_s=options.lease_s,
            heartbeat_s=options.heartbeat_s,
            wait=options.wait,
            poll_known_first=options.poll_known_first,
            only=options.only_items,
        )

    # ------------------------------------------------------------------ control

    def interrupt(self) -> None:
        """Ctrl-C: stop at once, except creates already on the wire, which are recorded
        (or, if the ledger is away, saved to the rescue file without waiting for it)."""
        self.state.interrupt()
        self.state.writer.stop_holding()

    def abort(self) -> None:
        """A second Ctrl-C: cancel creates in flight too; they are recorded as in doubt."""
        self.state.interrupt()
        self.sender.abort()

    def sending_halted(self) -> bool:
        return self.state.halted()

    def halt_sending(self, reason: str, detail: str) -> None:
        """Send nothing more; renders already created are still followed."""
        self.state.halt(reason, detail)

    # ------------------------------------------------------------------ run

    async def run(self) -> RunResult:
        if self.out_dir is not None:
            # Before anything is sent: an unwritable folder is found for free.
            await in_thread(prepare_folder, self.out_dir)
        with contextlib.ExitStack() as sockets:
            # Bound before anything is sent: a port in use is refused for free.
            sock = None
            if self.options.webhook is not None:
                sock = sockets.enter_context(listening_socket(self.options.webhook))
            return await self._run(sock)

    async def _run(self, sock: socket.socket | None) -> RunResult:
        await self.feeder.join()
        self.sender.learn_charges(await in_thread(self.ledger.observed_charges, self.batch.id))
        try:
            async with anyio.create_task_group() as services:
                services.start_soon(self.state.writer.serve)
                services.start_soon(self.feeder.keep_alive)
                services.start_soon(self.feeder.share_ceilings)
                services.start_soon(watch_stall, self.state, self.options.stall_timeout)
                await self._serve_webhooks(services, sock)
                try:
                    await self._work()
                    # Before the end is summed up: a ledger file gone now would be missed.
                    self._check_file()
                finally:
                    services.cancel_scope.cancel()
        finally:
            self.state.close()
            with anyio.CancelScope(shield=True):
                await self.feeder.leave()
        if self.state.fatal is not None:
            raise self.state.fatal
        return await self._result()

    def _check_file(self) -> None:
        # A loss is told to the state (fail): the run raises it below.
        with contextlib.suppress(LedgerLostError):
            self.state.writer.check_file()

    async def _serve_webhooks(
        self, services: anyio.abc.TaskGroup, sock: socket.socket | None
    ) -> None:
        """The receiver and its inbox; and, on a shared ledger, the look at events
        other workers received."""
        if not self.options.wait:
            return
        if sock is not None:
            await services.start(self._receive, sock)
        if sock is not None or self.ledger.dialect == "postgresql":
            services.start_soon(self.inbox.watch)

    async def _receive(
        self,
        sock: socket.socket,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        assert self.options.webhook is not None
        arrivals_tx, arrivals_rx = anyio.create_memory_object_stream[Arrival](UNBOUNDED)
        with arrivals_tx, arrivals_rx:
            receiver = WebhookReceiver(self.options.webhook, sock, arrivals_tx, self.counters)
            try:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self.inbox.take, arrivals_rx)
                    await tasks.start(receiver.serve)
                    self.webhook_port = receiver.port
                    task_status.started()
            finally:
                # Deliveries answered as the run ended: stored (and counted), no more.
                with anyio.CancelScope(shield=True), anyio.move_on_after(DRAIN_S):
                    await self.inbox.drain(arrivals_rx)

    async def _work(self) -> None:
        if self.state.halted():  # interrupted before it began
            return
        sends_tx, sends_rx = anyio.create_memory_object_stream[ItemRecord](
            max(1, self.options.concurrency)
        )
        with sends_tx, sends_rx:
            async with anyio.create_task_group() as parts:
                await parts.start(self.follower.serve, sends_tx)
                # More senders than request slots: while some commit an outcome,
                # others already hold the slots.
                for _ in range(math.ceil(self.options.concurrency * SENDERS_PER_SLOT)):
                    parts.start_soon(self.sender.serve, sends_rx)
                parts.start_soon(self.feeder.serve, sends_tx)
                await self.state.wait_done()
                parts.cancel_scope.cancel()

    async def _result(self) -> RunResult:
        states = await in_thread(self.ledger.state_counts, self.batch.id)
        if not any(states.get(state, 0) for state in UNFINISHED):
            # Nothing left to send or follow (failures and items in doubt are the
            # user's to decide): the batch is finished, until a resume reopens it.
            await in_thread(self.ledger.mark_finished, self.batch.id)
        state = self.state
        return RunResult(
            batch=self.batch.name,
            states=states,
            counters=self.counters,
            stopped=state.stopped,
            stop_detail=state.stop_detail,
            out_dir=self.out_dir,
            unsent=states.get("pending", 0) if state.stopped else 0,
            waited=self.options.wait,
            notices=state.notices.lines(),
        )
