"""The worker pool: send every pending item, follow each render, save the images.

One `BatchRun` is one worker on one batch:

    feeder ──claims pages──▶ send stream ──▶ N senders ──create──▶ API
                                                │ (intent before, outcome after,
                                                │  both committed via the ledger writer)
                                                ▼
                          scheduler ◀── tracked renders ──▶ pollers ──GET──▶ API
                                                              │
                                              downloads ◀─────┘ (complete)
                                              requeue ◀──────── (render failed, retries left)

Money rules (DESIGN.md): a create is re-sent automatically only when it surely
created nothing (connection never made, 429, 5xx). A timeout or a dropped
connection after the request went out leaves the item `unconfirmed`. Every
charge and refund is a credit row.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batcher.client import retry
from batcher.client.body import create_body
from batcher.client.magic_hour import CreatedProject, ProjectStatus
from batcher.errors import (
    ApiError,
    AuthError,
    ConnectError,
    DownloadExpiredError,
    ResponseLostError,
    TransportError,
)
from batcher.ledger import (
    FAILURE_DOWNLOAD,
    FAILURE_REFUSED,
    FAILURE_RENDER,
    FAILURE_TRANSIENT,
    BatchRecord,
    BeginSend,
    Created,
    ItemRecord,
    Ledger,
    LedgerWriter,
    ReleaseClaims,
    RenderFinished,
    SendFailed,
    utcnow,
)
from batcher.run.files import Manifest, batch_folder, image_name
from batcher.run.limits import AdaptiveLimiter
from batcher.run.liveness import HEARTBEAT_S, LEASE_S, is_dead, new_worker
from batcher.run.pacing import PollPlanner, RenderGate

log = logging.getLogger(__name__)

# A create refused with 429/5xx or never connected is retried this many times
# within one run before the item is left `failed` (transient) for `resume`.
CREATE_ATTEMPTS = 6
# 429s pace themselves through the limiter; allow many before giving an item up.
THROTTLED_ATTEMPTS = 30
# This many creates in a row that could not even connect: the API is unreachable.
UNREACHABLE_AFTER = 3
# Items claimed per query: large pages make claims cheap per item, small ones
# leave more for other workers; a worker holds about this many unsent items.
CLAIM_PAGE_MAX = 256
# Sender tasks per request slot (--concurrency): a sender spends part of each
# item committing its outcome after giving its slot back.
SENDERS_PER_SLOT = 1.5
# How often a worker re-reads the batch's shared ceilings and counts its peers.
SHARE_REFRESH_S = 2.0
# Expired download URLs: fetch fresh ones this many times before giving up.
DOWNLOAD_ROUNDS = 3
FINISHED = frozenset({"complete", "error", "canceled"})

# Why a run stopped sending before every item was sent.
STOP_BUDGET = "budget"
STOP_CREDITS = "credits"
STOP_UNREACHABLE = "unreachable"
STOP_INTERRUPTED = "interrupted"
STOP_AUTH = "auth"


_BEGUN = object()  # the intent is written; the request is next
_SETTLED = object()  # the attempt ended the item's sending for this run
_NO_BUDGET = object()  # nothing sent: the reservation did not fit


@dataclass(frozen=True, slots=True)
class _Sent:
    """What a create came back with: the project, or the error."""

    answer: CreatedProject | ApiError | TransportError


@dataclass(frozen=True, slots=True)
class _Retry:
    """The create surely created nothing; try again (`gated`: once the render gate opens)."""

    error: Exception
    gated: bool = False


def _kind(item: ItemRecord) -> tuple[str, str | None, int]:
    """Items of one kind are charged alike."""
    s = item.settings
    return (s.model, s.resolution, s.image_count)


class ImageApi(Protocol):
    """What the runner needs of the API client (batcher.client.magic_hour.MagicHourClient)."""

    async def create_image(self, body: Mapping[str, Any]) -> CreatedProject: ...

    async def get_project(self, project_id: str) -> ProjectStatus: ...

    async def download(self, url: str, dest: Path) -> int: ...


@dataclass(frozen=True, slots=True)
class RunOptions:
    concurrency: int = 8
    rate: float | None = None
    wait: bool = True
    download: bool = True
    out_dir: Path | None = None
    render_retries: int = 1
    claim_page: int = 0  # 0: four times the concurrency, at most CLAIM_PAGE_MAX
    lease_s: float = LEASE_S
    heartbeat_s: float = HEARTBEAT_S
    # Poll every known render before sending (resume's promise). A worker joining
    # a --no-wait batch skips it: the renders its peers just submitted are theirs.
    poll_known_first: bool = True


@dataclass
class RunCounters:
    """Live numbers for progress displays; only the runner writes them."""

    sent: int = 0  # create requests sent
    created: int = 0
    complete: int = 0
    failed: int = 0
    unconfirmed: int = 0
    throttled: int = 0  # 429 answers
    polls: int = 0
    images: int = 0
    credits_charged: int = 0
    credits_refunded: int = 0
    in_flight: int = 0  # create requests in flight
    rendering: int = 0  # renders followed and not finished
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


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

    @property
    def succeeded(self) -> bool:
        """Every item complete, or submitted when the run did not wait for renders."""
        if self.stopped is not None:
            return False
        open_states = ["pending", "sending", "unconfirmed", "failed"]
        if self.waited:
            open_states.append("submitted")
        return not any(self.states.get(state, 0) for state in open_states)


@dataclass(slots=True)
class _Tracked:
    item: ItemRecord
    project_id: str
    charged: int | None  # credits charged at create; None when not known here
    created_at: float  # monotonic time the create was accepted
    polls: int = 0
    last_pending_age: float | None = None  # seen unfinished this long after its create
    first_poll: bool = False  # resume: counts toward the poll pass before sending
    # Created by this run: its age is a render time the poll planner can learn from.
    # An adopted render was created who knows when.
    age_known: bool = True


class BatchRun:
    """One worker on one batch. Create it, then `await run()`; `interrupt()` and
    `halt_sending()` may be called from other tasks (signal handlers, tests)."""

    def __init__(
        self,
        ledger: Ledger,
        client: ImageApi,
        batch: BatchRecord,
        options: RunOptions,
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.batch = batch
        self.options = options
        self.counters = RunCounters()
        self.limiter = AdaptiveLimiter(options.concurrency, rate=options.rate)
        self.gate = RenderGate()
        self.planner = PollPlanner()
        self.worker = new_worker(batch.id)
        self.writer = LedgerWriter(ledger)
        self.out_dir = batch_folder(options.out_dir, batch.name) if options.download else None
        self.manifest = Manifest(batch_folder(options.out_dir, batch.name))
        self.stopped: str | None = None
        self.stop_detail: str | None = None
        self.fatal: BaseException | None = None
        self._work_scope: anyio.CancelScope | None = None
        self._shields: set[anyio.CancelScope] = set()
        self._sending_halted = False
        self._feeder_done = False
        self._active = 0  # items held by this run and not yet settled
        self._idle = anyio.Event()
        self._reserved_in_flight = 0
        self._settled = anyio.Event()
        self._observed: dict[tuple[str, str | None, int], int] = {}
        # Per kind of item under a budget: the item sent first, and who waits for it.
        self._probes: dict[tuple[str, str | None, int], tuple[int, anyio.Event]] = {}
        self._connect_failures = 0
        self._schedule: list[tuple[float, int, _Tracked]] = []
        self._schedule_seq = 0
        self._schedule_changed = anyio.Event()
        self._first_polls_left = 0
        self._first_polls_done = anyio.Event()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._send_tx: MemoryObjectSendStream[ItemRecord]
        self._send_rx: MemoryObjectReceiveStream[ItemRecord]
        self._poll_tx: MemoryObjectSendStream[_Tracked]
        self._poll_rx: MemoryObjectReceiveStream[_Tracked]
        self._downloads = anyio.CapacityLimiter(max(2, min(options.concurrency, 16)))

    # ------------------------------------------------------------------ control

    def interrupt(self) -> None:
        """Ctrl-C: stop at once, except creates already on the wire, which are recorded."""
        self._halt(STOP_INTERRUPTED, "interrupted by the user")
        if self._work_scope is not None:
            self._work_scope.cancel()

    def abort(self) -> None:
        """A second Ctrl-C: cancel creates in flight too; they are recorded as in doubt."""
        self.interrupt()
        for scope in list(self._shields):
            scope.shield = False
            scope.cancel()

    def sending_halted(self) -> bool:
        return self._sending_halted

    def halt_sending(self, reason: str, detail: str) -> None:
        """Send nothing more; renders already created are still followed."""
        self._halt(reason, detail)

    def _halt(self, reason: str, detail: str) -> None:
        if self.stopped is None:
            self.stopped, self.stop_detail = reason, detail
            log.warning("sending stopped", extra={"reason": reason, "detail": detail})
        self._sending_halted = True
        self._settled.set()

    # ------------------------------------------------------------------ main

    async def run(self) -> RunResult:
        ledger = self.ledger
        worker = self.worker
        await self._recover()
        await self._thread(ledger.register_worker, worker)
        self._observed = await self._thread(ledger.observed_charges, self.batch.id)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            async with anyio.create_task_group() as services:
                services.start_soon(self.writer.serve)
                services.start_soon(self._heartbeat)
                services.start_soon(self._share_limits)
                try:
                    await self._work()
                finally:
                    services.cancel_scope.cancel()
        finally:
            self.manifest.close()
            with anyio.CancelScope(shield=True):
                await self._thread(ledger.stop_worker, worker.id)
        if self.fatal is not None:
            raise self.fatal
        states = await self._thread(ledger.state_counts, self.batch.id)
        if not any(states.get(state, 0) for state in ("pending", "sending", "submitted")):
            # Nothing left to send or follow (failures and items in doubt are the
            # user's to decide): the batch is finished, until a resume reopens it.
            await self._thread(ledger.mark_finished, self.batch.id)
        unsent = states.get("pending", 0) if self.stopped else 0
        return RunResult(
            batch=self.batch.name,
            states=states,
            counters=self.counters,
            stopped=self.stopped,
            stop_detail=self.stop_detail,
            out_dir=self.out_dir,
            unsent=unsent,
            waited=self.options.wait,
        )

    async def _work(self) -> None:
        send_tx, send_rx = anyio.create_memory_object_stream[ItemRecord](
            max(1, self.options.concurrency)
        )
        poll_tx, poll_rx = anyio.create_memory_object_stream[_Tracked](math.inf)
        self._send_tx, self._send_rx, self._poll_tx, self._poll_rx = (
            send_tx,
            send_rx,
            poll_tx,
            poll_rx,
        )
        with send_tx, send_rx, poll_tx, poll_rx, anyio.CancelScope() as scope:
            self._work_scope = scope
            if self._sending_halted:  # interrupted before it began
                return
            async with anyio.create_task_group() as tasks:
                self._task_group = tasks
                tasks.start_soon(self._scheduler)
                for _ in range(max(4, self.options.concurrency)):
                    tasks.start_soon(self._poller)
                # More senders than request slots: while some commit an outcome,
                # others already hold the slots.
                for _ in range(math.ceil(self.options.concurrency * SENDERS_PER_SLOT)):
                    tasks.start_soon(self._sender)
                # Known projects first: fresh state and download URLs before anything new.
                if self.options.poll_known_first:
                    await self._adopt_submitted(first_pass=True)
                    await self._first_polls_done.wait()
                tasks.start_soon(self._feeder)
                await self._idle.wait()
                tasks.cancel_scope.cancel()

    # ------------------------------------------------------------------ bookkeeping

    async def _thread(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: func(*args, **kwargs))

    def _hold(self, count: int = 1) -> None:
        self._active += count

    def _settle(self, count: int = 1) -> None:
        self._active -= count
        self._check_idle()

    def _check_idle(self) -> None:
        if self._feeder_done and self._active <= 0:
            self._idle.set()

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self.options.heartbeat_s)
            try:
                await self._thread(
                    self.ledger.heartbeat,
                    self.worker.id,
                    lease_until=self._lease_until(),
                    in_flight=self.counters.in_flight + self.counters.rendering,
                )
            except Exception:
                log.warning("heartbeat failed", exc_info=True)

    async def _share_limits(self) -> None:
        """Keep this worker to its share of the batch's shared ceilings, if any:
        N workers split them instead of multiplying them."""
        own_ceiling, own_rate = self.limiter.ceiling, self.limiter.rate
        while True:
            batch = await self._thread(self.ledger.get_batch_by_id, self.batch.id)
            if batch.shared_concurrency is not None or batch.shared_rate is not None:
                workers = max(
                    1,
                    await self._thread(
                        self.ledger.live_worker_count, self.batch.id, self.options.lease_s
                    ),
                )
                ceiling, rate = own_ceiling, own_rate
                if batch.shared_concurrency is not None:
                    ceiling = min(ceiling, max(1, batch.shared_concurrency // workers))
                if batch.shared_rate is not None:
                    share = batch.shared_rate / workers
                    rate = share if rate is None else min(rate, share)
                self.limiter.set_ceilings(ceiling, rate)
            await anyio.sleep(SHARE_REFRESH_S)

    def _lease_until(self) -> datetime:
        return utcnow() + timedelta(seconds=self.options.lease_s)

    # ------------------------------------------------------------------ feeding

    async def _adopt_submitted(self, *, first_pass: bool) -> int:
        """Claim renders created earlier (by a previous run or a dead worker) and follow them."""
        adopted = 0
        while True:
            items = await self._claim("submitted")
            if not items:
                break
            charges = await self._thread(
                self.ledger.project_charges, [i.project_id for i in items if i.project_id]
            )
            self._hold(len(items))
            self.gate.adopt(len(items))
            self.counters.rendering += len(items)
            if first_pass:
                self._first_polls_left += len(items)
            for item in items:
                assert item.project_id is not None
                charged = charges.get(item.project_id)
                tracked = _Tracked(
                    item=item,
                    project_id=item.project_id,
                    charged=charged[0] - charged[1] if charged else None,
                    created_at=time.monotonic(),
                    first_poll=first_pass,
                    age_known=False,
                )
                # Age unknown: poll now.
                self._poll_tx.send_nowait(tracked)
            adopted += len(items)
        if first_pass and self._first_polls_left == 0:
            self._first_polls_done.set()
        return adopted

    async def _claim(self, state: str) -> list[ItemRecord]:
        """The next page of unclaimed items in `state`, now held by this worker."""
        items: list[ItemRecord] = await self._thread(
            self.ledger.claim,
            self.batch.id,
            self.worker.id,
            states=[state],
            limit=self.options.claim_page
            or min(CLAIM_PAGE_MAX, max(16, 4 * self.options.concurrency)),
            lease_until=self._lease_until(),
        )
        return items

    async def _feeder(self) -> None:
        try:
            while not self._sending_halted:
                items = await self._claim("pending")
                if not items:
                    if self.options.wait and await self._adopt_submitted(first_pass=False):
                        continue
                    if not await self._others_hold_work():
                        break
                    await anyio.sleep(min(5.0, self.options.lease_s / 4))
                    continue
                self._hold(len(items))
                for index, item in enumerate(items):
                    if self.sending_halted():
                        await self._release(items[index:])
                        break
                    await self._send_tx.send(item)
        finally:
            self._feeder_done = True
            self._check_idle()

    async def _others_hold_work(self) -> bool:
        """Other live workers hold items that may come back (their lease may expire).
        Settles what dead workers left first, so their items are claimable now."""
        await self._recover()
        return bool(await self._thread(self.ledger.held_elsewhere, self.batch.id, self.worker.id))

    async def _recover(self) -> None:
        """Settle what dead workers left: their sends in doubt, their claims free."""
        me, lease_s = self.worker.id, self.options.lease_s
        await self._thread(
            self.ledger.recover, self.batch.id, is_dead=lambda w: is_dead(w, me=me, lease_s=lease_s)
        )

    async def _release(self, items: list[ItemRecord]) -> None:
        if items:
            await self.writer.apply(ReleaseClaims(tuple(i.id for i in items)))
            self._settle(len(items))

    # ------------------------------------------------------------------ sending

    async def _sender(self) -> None:
        async for item in self._send_rx:
            if self._sending_halted:
                await self._release([item])
                continue
            try:
                await self._send(item)
            except anyio.get_cancelled_exc_class():
                raise
            except AuthError as exc:
                self._fail(exc)
                return

    def _fail(self, exc: AuthError) -> None:
        """The key was rejected: nothing more can work. Stop everything; `run()` raises it."""
        self.fatal = exc
        self._halt(STOP_AUTH, str(exc))
        if self._work_scope is not None:
            self._work_scope.cancel()

    def _reservation(self, item: ItemRecord) -> int:
        return max(item.estimate, self._observed.get(_kind(item), 0))

    async def _await_first_charge(self, item: ItemRecord) -> None:
        """Under a budget, an estimate that is only a lower bound is not trusted
        for a whole wave of concurrent creates: the first item of its kind goes
        alone, and the others reserve what it was really charged."""
        if self.batch.budget is None or item.estimate_exact:
            return
        kind = _kind(item)
        while kind not in self._observed:
            probe = self._probes.get(kind)
            if probe is None:
                self._probes[kind] = (item.id, anyio.Event())  # this item goes first
                return
            if probe[0] == item.id:
                return
            await probe[1].wait()

    def _probe_done(self, item: ItemRecord) -> None:
        """The first item of its kind was answered (charged or not): let the others look."""
        kind = _kind(item)
        probe = self._probes.get(kind)
        if probe is not None and probe[0] == item.id:
            del self._probes[kind]
            probe[1].set()

    async def _send(self, item: ItemRecord) -> None:
        """Create one item's project, retrying only what surely created nothing."""
        body = create_body(item.prompt, item.settings, item.project_name)
        failures = 0  # 5xx and connection failures
        throttles = 0  # 429s not explained by the render gate
        while True:
            if self._sending_halted:
                await self._release([item])
                return
            await self._await_first_charge(item)
            if self.options.wait:
                await self.gate.acquire()
            # Intent, then a request slot, then the request: the slot covers only
            # the request (`--concurrency` counts requests in flight), and there
            # are more senders than slots, so commits overlap other requests.
            # No await stands between the request's answer and the shielded
            # block that records it.
            await self.limiter.ready()
            reserve = self._reservation(item)
            outcome = await self._begin(item, reserve)
            if outcome is _BEGUN:
                outcome = await self._send_begun(item, body, reserve)
            self._probe_done(item)
            if outcome is _SETTLED:
                return
            if outcome is _NO_BUDGET:
                self._gate_not_created()
                if await self._wait_for_budget(item):
                    continue
                return
            assert isinstance(outcome, _Retry)
            if outcome.gated:
                continue  # the render gate paces it: wait for a render to finish
            if isinstance(outcome.error, ApiError) and outcome.error.status == 429:
                throttles += 1
                exhausted = throttles >= THROTTLED_ATTEMPTS
            else:
                failures += 1
                exhausted = failures >= CREATE_ATTEMPTS
                if isinstance(outcome.error, ConnectError):
                    self._connect_failures += 1
                    if self._connect_failures >= UNREACHABLE_AFTER:
                        self.halt_sending(
                            STOP_UNREACHABLE, f"the API is unreachable: {outcome.error}"
                        )
            if exhausted:
                await self._record_send_failure(item, outcome.error)
                return
            # A 429 pauses the limiter itself (Retry-After or backoff), which every
            # slot waits for; other failures back off here.
            if not isinstance(outcome.error, ApiError) or outcome.error.status != 429:
                await anyio.sleep(retry.create_wait(failures, outcome.error))

    async def _begin(self, item: ItemRecord, reserve: int) -> object:
        """Write the intent. _BEGUN, or _NO_BUDGET (nothing written), or _SETTLED
        (the item is no longer ours)."""
        accepted = await self.writer.apply(
            BeginSend(
                item.id, item.batch_id, self.worker.id, reserve, self.batch.budget is not None
            )
        )
        if accepted is None:
            # The lease lapsed and another worker took the item: it sends it, not us.
            log.warning("claim lost", extra={"key": item.key})
            self._gate_not_created()
            self._settle()
            return _SETTLED
        if not accepted:
            return _NO_BUDGET
        self._reserved_in_flight += reserve
        return _BEGUN

    async def _send_begun(
        self, item: ItemRecord, body: Mapping[str, Any], reserve: int
    ) -> _Retry | object:
        """Take a request slot, send, record the answer.

        The slot covers only the request (`--concurrency` counts requests in
        flight), and there are more senders than slots, so commits overlap
        other requests. Waiting for the slot is not sending: a stop then puts
        the item back. Once the request is out, only `abort()` can cut it short
        (it is then in doubt); no await stands between its answer and the
        shielded block that records it.
        """
        try:
            await self.limiter.acquire()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._settle_send(SendFailed(item.id, item.batch_id, "pending", reserve))
                self._gate_not_created()
                self._settle()
            raise
        sent: _Sent | None = None
        with anyio.CancelScope(shield=True) as shield:
            self._shields.add(shield)
            try:
                sent = await self._request(item, body, reserve)
            finally:
                self._shields.discard(shield)
                self.limiter.release()
        if sent is None:  # aborted: recorded in doubt already
            return _SETTLED
        with anyio.CancelScope(shield=True):
            outcome = await self._record(item, sent, reserve)
        return outcome

    async def _request(self, item: ItemRecord, body: Mapping[str, Any], reserve: int) -> _Sent:
        self.counters.sent += 1
        self.counters.in_flight += 1
        try:
            return _Sent(await self.client.create_image(body))
        except anyio.get_cancelled_exc_class():
            # Aborted mid-request: it may have reached the server.
            await self._settle_send(
                SendFailed(
                    item.id,
                    item.batch_id,
                    "unconfirmed",
                    reserve,
                    message="interrupted while the create was in flight",
                )
            )
            self._gate_not_created()
            self.counters.unconfirmed += 1
            self._settle()
            raise
        except (ApiError, TransportError) as exc:
            return _Sent(exc)
        finally:
            self.counters.in_flight -= 1

    async def _record(self, item: ItemRecord, sent: _Sent, reserve: int) -> _Retry | object:
        """The outcome of a create, committed."""
        if isinstance(sent.answer, CreatedProject):
            await self._created(item, sent.answer, reserve)
            return _SETTLED
        return await self._create_failed(item, sent.answer, reserve)

    async def _settle_send(self, op: SendFailed | Created) -> None:
        await self.writer.apply(op)
        self._reserved_in_flight -= op.reserved
        self._notify_settled()

    def _gate_not_created(self) -> None:
        if self.options.wait:
            self.gate.not_created()

    async def _wait_for_budget(self, item: ItemRecord) -> bool:
        """The reservation did not fit. While our own reservations are out, or renders
        that may yet be refunded, wait for them and try again. Otherwise stop sending."""
        waiting_on = self._reserved_in_flight > 0 or self.counters.rendering > 0
        if waiting_on and not self._sending_halted:
            settled = self._settled
            await settled.wait()
            return True
        self.halt_sending(
            STOP_BUDGET,
            f"the budget of {self.batch.budget} credits has no room for the next item "
            f"(it needs about {self._reservation(item)})",
        )
        await self._release([item])
        return False

    async def _created(self, item: ItemRecord, created: CreatedProject, reserve: int) -> None:
        self._connect_failures = 0
        self.limiter.on_success()
        key = _kind(item)
        self._observed[key] = max(self._observed.get(key, 0), created.credits_charged)
        await self._settle_send(
            Created(
                item.id,
                item.batch_id,
                created.project_id,
                created.credits_charged,
                reserve,
                keep_claim=self.options.wait,
            )
        )
        self.counters.created += 1
        self.counters.credits_charged += created.credits_charged
        if not self.options.wait:
            self._settle()
            return
        self.gate.created()
        self.counters.rendering += 1
        submitted = dataclasses.replace(
            item, state="submitted", project_id=created.project_id, attempts=item.attempts + 1
        )
        self._track(
            _Tracked(
                item=submitted,
                project_id=created.project_id,
                charged=created.credits_charged,
                created_at=time.monotonic(),
            )
        )

    async def _create_failed(
        self, item: ItemRecord, exc: ApiError | TransportError, reserve: int
    ) -> _Retry | object:
        if isinstance(exc, ResponseLostError):
            # Sent, answer lost: maybe charged. Never re-sent without the user's word.
            await self._settle_send(
                SendFailed(item.id, item.batch_id, "unconfirmed", reserve, message=str(exc))
            )
            self._gate_not_created()
            self.counters.unconfirmed += 1
            self._manifest(item, "unconfirmed", error=f"in doubt: {exc}")
            self._settle()
            return _SETTLED
        if isinstance(exc, AuthError):
            await self._settle_send(
                SendFailed(item.id, item.batch_id, "pending", reserve, status=401, message=str(exc))
            )
            self._gate_not_created()
            self._settle()
            raise exc
        if retry.create_is_retryable(exc):
            # Surely nothing created: back to pending (so a crash now loses nothing)
            # and try again.
            status = exc.status if isinstance(exc, ApiError) else None
            await self._settle_send(
                SendFailed(
                    item.id, item.batch_id, "pending", reserve, status=status, message=str(exc)
                )
            )
            if not (isinstance(exc, ApiError) and exc.status == 429):
                self._gate_not_created()
                return _Retry(exc)
            self.counters.throttled += 1
            explained = self.options.wait and self.gate.throttled()
            if exc.retry_after is not None or not explained:
                self.limiter.on_throttle(exc.retry_after)
            # Explained by the render cap and no Retry-After: the gate alone paces it.
            return _Retry(exc, gated=explained and exc.retry_after is None)
        # Refused for good (400, 402, 403, 404, 422...): the API said why.
        assert isinstance(exc, ApiError)
        await self._settle_send(
            SendFailed(
                item.id,
                item.batch_id,
                "failed",
                reserve,
                failure=FAILURE_REFUSED,
                status=exc.status,
                message=exc.message,
            )
        )
        self._gate_not_created()
        self.counters.failed += 1
        self._manifest(item, "failed", error=f"HTTP {exc.status}: {exc.message}")
        self._settle()
        if exc.status == 402:
            self.halt_sending(
                STOP_CREDITS, f"the account cannot pay for more (HTTP 402: {exc.message})"
            )
        return _SETTLED

    async def _record_send_failure(self, item: ItemRecord, exc: Exception) -> None:
        """Retries ran out on a create that surely created nothing: `resume` retries it."""
        status = exc.status if isinstance(exc, ApiError) else None
        await self.writer.apply(
            SendFailed(
                item.id,
                item.batch_id,
                "failed",
                0,
                failure=FAILURE_TRANSIENT,
                status=status,
                message=str(exc),
            )
        )
        self.counters.failed += 1
        self._manifest(item, "failed", error=str(exc))
        self._settle()

    # ------------------------------------------------------------------ tracking

    def _track(self, tracked: _Tracked) -> None:
        age = time.monotonic() - tracked.created_at
        delay = self.planner.next_delay(age, tracked.polls)
        self._schedule_at(time.monotonic() + delay, tracked)

    def _schedule_at(self, due: float, tracked: _Tracked) -> None:
        self._schedule_seq += 1
        heapq.heappush(self._schedule, (due, self._schedule_seq, tracked))
        if self._schedule[0][1] == self._schedule_seq:
            self._schedule_changed.set()

    async def _scheduler(self) -> None:
        while True:
            changed = self._schedule_changed = anyio.Event()
            now = time.monotonic()
            while self._schedule and self._schedule[0][0] <= now:
                _, _, tracked = heapq.heappop(self._schedule)
                self._poll_tx.send_nowait(tracked)
            timeout = self._schedule[0][0] - now if self._schedule else math.inf
            with anyio.move_on_after(timeout):
                await changed.wait()

    async def _poller(self) -> None:
        async for tracked in self._poll_rx:
            await self._poll(tracked)

    async def _get(self, project_id: str) -> ProjectStatus:
        async for attempt in retry.read_retrying():
            with attempt:
                async with self.limiter.slot():
                    self.counters.polls += 1
                    try:
                        status = await self.client.get_project(project_id)
                    except ApiError as exc:
                        if exc.status == 429:
                            self.counters.throttled += 1
                            self.limiter.on_throttle(exc.retry_after)
                        raise
                self.limiter.on_success()
                return status
        raise AssertionError("unreachable")  # pragma: no cover

    async def _poll(self, tracked: _Tracked) -> None:
        age = time.monotonic() - tracked.created_at
        try:
            status = await self._get(tracked.project_id)
        except AuthError as exc:
            self._fail(exc)
            return
        except (ApiError, TransportError) as exc:
            self._first_poll_seen(tracked)
            if isinstance(exc, ApiError) and exc.status == 404:
                await self._render_failed(tracked, None, "not_found", exc.message)
                return
            log.warning(
                "poll failed; will try again",
                extra={"project_id": tracked.project_id, "error": str(exc)},
            )
            tracked.polls += 1
            self._schedule_at(time.monotonic() + 5.0, tracked)
            return
        tracked.polls += 1
        self._first_poll_seen(tracked)
        if status.status not in FINISHED:
            tracked.last_pending_age = age
            if not self.options.wait:
                # --no-wait: a resumed batch looks once, then leaves the render be.
                await self._release([tracked.item])
                self._render_left(tracked)
                return
            self._track(tracked)
            return
        if tracked.age_known:
            self.planner.observe(age, tracked.last_pending_age)
        if status.status == "complete":
            await self._complete(tracked, status)
        else:
            code = status.error_code or status.status
            message = status.error_message or f"the render ended as {status.status}"
            await self._render_failed(tracked, status, code, message)

    def _first_poll_seen(self, tracked: _Tracked) -> None:
        if tracked.first_poll:
            tracked.first_poll = False
            self._first_polls_left -= 1
            if self._first_polls_left <= 0:
                self._first_polls_done.set()

    def _render_left(self, tracked: _Tracked) -> None:
        self.counters.rendering -= 1
        self.gate.finished()

    def _notify_settled(self) -> None:
        self._settled.set()
        self._settled = anyio.Event()

    async def _complete(self, tracked: _Tracked, status: ProjectStatus) -> None:
        self._render_left(tracked)
        files: tuple[str, ...] = ()
        if self.out_dir is not None:
            try:
                files = await self._download_all(tracked, status)
            except (ApiError, TransportError) as exc:
                await self._finish_render(
                    tracked, "failed", failure=FAILURE_DOWNLOAD, message=f"download failed: {exc}"
                )
                self.counters.failed += 1
                self._manifest(tracked, "failed", error=f"download failed: {exc}")
                self._settle()
                return
        refund = self._refund(tracked, status)
        await self._finish_render(tracked, "complete", refund=refund, files=files)
        self.counters.complete += 1
        self.counters.images += len(files) if files else len(status.downloads)
        self.counters.credits_refunded += refund
        self._manifest(tracked, "complete", refunded=refund, files=files)
        self._settle()

    async def _finish_render(self, tracked: _Tracked, state: str, **fields: Any) -> None:
        """Record how a followed render ended; budget it frees is then usable."""
        item = tracked.item
        await self.writer.apply(
            RenderFinished(item.id, item.batch_id, tracked.project_id, state, **fields)
        )
        self._notify_settled()

    def _refund(self, tracked: _Tracked, status: ProjectStatus | None) -> int:
        if status is None or status.credits_charged is None or tracked.charged is None:
            return 0
        return max(0, tracked.charged - status.credits_charged)

    async def _render_failed(
        self, tracked: _Tracked, status: ProjectStatus | None, code: str, message: str
    ) -> None:
        self._render_left(tracked)
        refund = self._refund(tracked, status)
        item = tracked.item
        retry_render = item.render_failures < self.options.render_retries and not (
            self._sending_halted
        )
        await self._finish_render(
            tracked,
            "pending" if retry_render else "failed",
            refund=refund,
            failure=None if retry_render else FAILURE_RENDER,
            code=code,
            message=message,
            count_render_failure=True,
        )
        self.counters.credits_refunded += refund
        if retry_render:
            again = dataclasses.replace(
                item, state="pending", render_failures=item.render_failures + 1, project_id=None
            )
            log.info(
                "render failed; creating it again",
                extra={"key": item.key, "project_id": tracked.project_id, "code": code},
            )
            assert self._task_group is not None
            self._task_group.start_soon(self._send_tx.send, again)
            return
        self.counters.failed += 1
        self._manifest(tracked, "failed", refunded=refund, error=f"{code}: {message}")
        self._settle()

    async def _download_all(self, tracked: _Tracked, status: ProjectStatus) -> tuple[str, ...]:
        assert self.out_dir is not None
        for round_ in range(DOWNLOAD_ROUNDS):
            try:
                paths: list[str] = []
                for index, download in enumerate(status.downloads):
                    name = image_name(
                        tracked.item.ordinal,
                        tracked.item.prompt,
                        tracked.item.key,
                        index,
                        download.url,
                    )
                    dest = self.out_dir / name
                    async with self._downloads:
                        await self._fetch(download.url, dest)
                    paths.append(str(dest))
                return tuple(paths)
            except DownloadExpiredError:
                if round_ + 1 >= DOWNLOAD_ROUNDS:
                    raise
                # Signed URLs expire; a fresh GET gives new ones.
                status = await self._get(tracked.project_id)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch(self, url: str, dest: Path) -> None:
        async for attempt in retry.read_retrying():
            with attempt:
                await self.client.download(url, dest)

    # ------------------------------------------------------------------ manifest

    def _manifest(
        self,
        tracked: _Tracked | ItemRecord,
        state: str,
        *,
        refunded: int = 0,
        files: tuple[str, ...] = (),
        error: str | None = None,
    ) -> None:
        """One line for an item that finished this run (an item never created has
        no project and was charged nothing)."""
        item = tracked.item if isinstance(tracked, _Tracked) else tracked
        project_id = tracked.project_id if isinstance(tracked, _Tracked) else None
        self.manifest.write(
            {
                "key": item.key,
                "prompt": item.prompt,
                "model": item.settings.model,
                "resolution": item.settings.resolution,
                "image_count": item.settings.image_count,
                "project_id": project_id,
                "state": state,
                "credits_charged": tracked.charged if isinstance(tracked, _Tracked) else 0,
                "credits_refunded": refunded,
                "files": list(files),
                "error": error,
            }
        )
