"""Sending creates: for each item the intent, the request and the outcome, each
committed before the next step, and the budget's reservations.

    item ──▶ first of its kind? (budget probe) ──▶ render gate ──▶ intent (reserve)
         ──▶ request slot ──POST──▶ API ──▶ outcome ──▶ the follower (accepted)
                                              │
        429 / 5xx: back to pending, and the retry policy (batcher.client.retry)
        sends it again; never connected: back to pending, and sent again once
        the outage is over (batcher.run.outage); anything else settles the item

Money rules (DESIGN.md): a create is re-sent automatically only when it surely
created nothing (connection never made, 429, 5xx). A timeout or a dropped
connection after the request went out leaves the item `unconfirmed`. A budget
reserves each item's estimate (or the charge already seen for its kind, when
higher) before its create and settles it to the charge after, so concurrent
creates can never overshoot it. Creates in doubt several times in a row trip
the breaker (batcher.run.breaker): nothing more is sent.

429s are paced, not merely retried: every request waits for the AdaptiveLimiter,
which a 429 pauses, narrows and slows to a learned request rate; a 429 that the
render gate explains (as many renders as its cap may be in flight: the
account's cap on renders in flight) waits for a render to be probably done
instead, and does not count as a failed attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from batcher.client import retry
from batcher.client.body import create_body
from batcher.client.limits import AdaptiveLimiter
from batcher.client.magic_hour import CreatedProject
from batcher.errors import (
    ApiError,
    AuthError,
    ConnectError,
    ResponseLostError,
    TransportError,
)
from batcher.ledger import (
    FAILURE_REFUSED,
    FAILURE_TRANSIENT,
    BatchRecord,
    BeginSend,
    Created,
    ItemRecord,
    SendFailed,
)
from batcher.run import log_context
from batcher.run.breaker import DoubtBreaker
from batcher.run.follower import Follower
from batcher.run.outage import Outage
from batcher.run.pacing import RenderGate
from batcher.run.state import (
    STOP_BUDGET,
    STOP_CREDITS,
    ImageApi,
    RunState,
)

log = logging.getLogger(__name__)

PAYMENT_REQUIRED: Final = 402

Kind = tuple[str, str | None, int]

# How one try at an item ended, short of a retryable error (which is raised).
_BEGUN: Final = object()  # the intent is written; the request is next
_SETTLED: Final = object()  # the item's sending is over for this run
_NO_BUDGET: Final = object()  # nothing sent: the reservation did not fit
_GATED: Final = object()  # a 429 the render gate explains: it paces the next try
_HALTED: Final = object()  # nothing sent: sending stopped while this try waited


def kind(item: ItemRecord) -> Kind:
    """Items of one kind are charged alike."""
    s = item.settings
    return (s.model, s.resolution, s.image_count)


class Sender:
    """Sends the items of one stream; `serve()` is one sender task, and the run
    starts several over the same stream and the same Sender."""

    def __init__(
        self,
        state: RunState,
        client: ImageApi,
        limiter: AdaptiveLimiter,
        gate: RenderGate,
        follower: Follower,
        outage: Outage,
        breaker: DoubtBreaker,
        *,
        batch: BatchRecord,
        worker_id: str,
        wait: bool,
    ) -> None:
        self._state = state
        self._counters = state.counters
        self._writer = state.writer
        self._client = client
        self._limiter = limiter
        self._gate = gate
        self._follower = follower
        self._outage = outage
        self._breaker = breaker
        self._batch = batch
        self._worker_id = worker_id
        self._wait = wait
        self._observed: dict[Kind, int] = {}  # the highest charge seen per kind
        # Per kind of item under a budget: the item sent first, and who waits for it.
        self._probes: dict[Kind, tuple[int, anyio.Event]] = {}
        self._reserved = 0  # credits reserved by creates not yet settled
        self._shields: set[anyio.CancelScope] = set()
        self._rtt: float | None = None  # a create's round trip, smoothed

    def learn_charges(self, observed: Mapping[Kind, int]) -> None:
        """What items of each kind were charged before (the ledger's credit rows)."""
        for key, charged in observed.items():
            self._observed[key] = max(self._observed.get(key, 0), charged)

    def abort(self) -> None:
        """Cut creates in flight short too; they are recorded as in doubt."""
        for scope in list(self._shields):
            scope.shield = False
            scope.cancel()

    async def serve(self, items: MemoryObjectReceiveStream[ItemRecord]) -> None:
        async for item in items:
            if self._state.halted():
                await self._state.release([item])
                continue
            try:
                await self._send(item)
            except AuthError as exc:
                self._state.fail(exc)
                return

    # ------------------------------------------------------------------ one item

    async def _send(self, item: ItemRecord) -> None:
        """Create one item's project, retrying (by the policy) only what surely
        created nothing."""
        body = create_body(item.prompt, item.settings, item.project_name)
        # As `with log_context.about(key=...)` around `retry.create(...)`, without
        # a context manager, a closure and two coroutines more on every create:
        # the first try goes straight, and only a retryable failure meets the policy.
        context = log_context.about_key(item.key)
        try:
            try:
                await self._try(item, body)
            except Exception as exc:
                if not retry.create_is_retryable(exc):
                    raise
                await retry.create_again(
                    exc, lambda: self._try(item, body), paced=True, about={"key": item.key}
                )
        except AuthError:
            raise
        except (ApiError, TransportError) as exc:
            await self._gave_up(item, exc)
        finally:
            log_context.reset(context)

    async def _try(self, item: ItemRecord, body: Mapping[str, Any]) -> None:
        """One try: return when the item's sending is settled for this run; raise
        the error of a create that surely created nothing (the item is `pending`
        again, still ours), for the retry policy to send it again."""
        while True:
            if self._state.halted():
                await self._state.release([item])
                return
            await self._await_first_charge(item)
            if self._wait:
                await self._gate.acquire()
            # Intent, then a request slot, then the request: the slot covers only
            # the request (`--concurrency` counts requests in flight), and there
            # are more senders than slots, so commits overlap other requests.
            # During an outage this waits: one request at a time probes the API
            # (`Outage.admitted()`, unrolled: while the API is up, nothing to wait for).
            probe = self._outage.down and await self._outage.admit()
            try:
                if self._state.halted():
                    self._gate_not_created()
                    outcome: object = _HALTED
                else:
                    await self._limiter.ready()
                    reserve = self._reservation(item)
                    outcome = await self._begin(item, reserve)
                    if outcome is _BEGUN:
                        outcome = await self._send_begun(item, body, reserve)
            finally:
                if probe:
                    self._outage.probe_over()
            self._probe_done(item)
            if outcome is _SETTLED:
                return
            if outcome is _GATED or outcome is _HALTED:
                continue  # wait for a render to finish, at the gate; or stop, at the top
            if isinstance(outcome, ConnectError):
                continue  # nothing was sent: the outage gate paces the next try
            if outcome is _NO_BUDGET:
                self._gate_not_created()
                if await self._wait_for_budget(item):
                    continue
                return
            assert isinstance(outcome, ApiError | TransportError)
            raise outcome

    async def _begin(self, item: ItemRecord, reserve: int) -> object:
        """Write the intent. _BEGUN, or _NO_BUDGET (nothing written), or _SETTLED
        (the item is no longer ours)."""
        accepted = await self._writer.apply(
            BeginSend(
                item.id, item.batch_id, self._worker_id, reserve, self._batch.budget is not None
            )
        )
        if accepted is None:
            # The lease lapsed and another worker took the item: it sends it, not us.
            log.warning("claim lost", extra={"key": item.key})
            self._gate_not_created()
            self._state.settle()
            return _SETTLED
        if not accepted:
            return _NO_BUDGET
        self._reserved += reserve
        return _BEGUN

    async def _send_begun(
        self, item: ItemRecord, body: Mapping[str, Any], reserve: int
    ) -> object | ApiError | TransportError:
        """Take a request slot, send, record the answer.

        Waiting for the slot is not sending: a stop then puts the item back.
        Once the request is out, only `abort()` can cut it short (it is then in
        doubt); no await stands between its answer and the shielded block that
        records it.
        """
        try:
            ticket = await self._limiter.acquire()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._settle_send(SendFailed(item.id, item.batch_id, "pending", reserve))
                self._gate_not_created()
                self._state.settle()
            raise
        if self._state.halted():
            # Sending stopped while this one waited for its slot: it stays unsent.
            self._limiter.release()
            with anyio.CancelScope(shield=True):
                await self._settle_send(SendFailed(item.id, item.batch_id, "pending", reserve))
                self._gate_not_created()
            return _HALTED
        answer: CreatedProject | ApiError | TransportError | None = None
        with anyio.CancelScope(shield=True) as shield:
            self._shields.add(shield)
            try:
                answer = await self._request(item, body, reserve)
            finally:
                self._shields.discard(shield)
                self._limiter.release()
        if answer is None:  # aborted: recorded in doubt already
            return _SETTLED
        with anyio.CancelScope(shield=True):
            if isinstance(answer, CreatedProject):
                await self._created(item, answer, reserve)
                outcome: object | ApiError | TransportError = _SETTLED
            else:
                outcome = await self._create_failed(item, answer, reserve, ticket)
        return outcome

    async def _request(
        self, item: ItemRecord, body: Mapping[str, Any], reserve: int
    ) -> CreatedProject | ApiError | TransportError:
        self._counters.sent += 1
        self._counters.in_flight += 1
        sent_at = time.monotonic()
        try:
            created = await self._client.create_image(body)
            self._round_trip(time.monotonic() - sent_at)
            return created
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
            self._counters.unconfirmed += 1
            self._state.settle()
            raise
        except (ApiError, TransportError) as exc:
            return exc
        finally:
            self._counters.in_flight -= 1

    # ------------------------------------------------------------------ outcomes

    async def _created(self, item: ItemRecord, created: CreatedProject, reserve: int) -> None:
        # The render holds its place from the answer on, not from its record.
        accepted = self._follower.accepted(item) if self._wait else None
        self._outage.reachable()
        self._breaker.cleared()
        self._limiter.on_success()
        key = kind(item)
        note: str | None = None
        if created.credits_charged is None:
            # The id is kept (the render is followed, the charge read from a
            # poll); the reservation stays until then: it may have been charged.
            note = f"charge unknown: {created.charge_problem}"
            self._state.notice(
                "charge_unknown", f"{item.key} (project {created.project_id}): {note}"
            )
        else:
            self._observed[key] = max(self._observed.get(key, 0), created.credits_charged)
        await self._settle_send(
            Created(
                item.id,
                item.batch_id,
                created.project_id,
                created.credits_charged,
                reserve,
                keep_claim=self._wait,
                note=note,
            )
        )
        self._counters.created += 1
        self._counters.credits_charged += created.credits_charged or 0
        # Paid for: a ledger lost from here on is rebuilt from this line (recover).
        self._state.write_sent(item, created.project_id, created.credits_charged)
        if accepted is None:  # --no-wait: the render is not followed
            self._state.settle()
            return
        self._follower.follow(item, created.project_id, created.credits_charged, accepted)

    async def _create_failed(
        self, item: ItemRecord, exc: ApiError | TransportError, reserve: int, ticket: int
    ) -> object | ApiError | TransportError:
        """Record a create that came back without a project. _SETTLED, _GATED, or
        the error to retry (the item is `pending` again)."""
        if isinstance(exc, ResponseLostError):
            # Sent, answer lost: maybe charged. Never re-sent without the user's word.
            await self._settle_send(
                SendFailed(item.id, item.batch_id, "unconfirmed", reserve, message=str(exc))
            )
            self._gate_not_created()
            self._counters.unconfirmed += 1
            self._state.write_manifest(item, "unconfirmed", error=f"in doubt: {exc}")
            self._state.settle()
            self._breaker.in_doubt(str(exc))
            return _SETTLED
        if isinstance(exc, ConnectError):
            # Nothing was sent: pending again, and the API is down for now.
            await self._settle_send(
                SendFailed(item.id, item.batch_id, "pending", reserve, message=str(exc))
            )
            self._gate_not_created()
            self._outage.unreachable(exc)
            return exc
        # An HTTP answer: the API is there, and this create's outcome is clear.
        self._outage.reachable()
        self._breaker.cleared()
        if isinstance(exc, AuthError):
            await self._settle_send(
                SendFailed(item.id, item.batch_id, "pending", reserve, status=401, message=str(exc))
            )
            self._gate_not_created()
            self._state.settle()
            raise exc
        if retry.create_is_retryable(exc):
            # Surely nothing created: back to pending (so a crash now loses nothing).
            status = exc.status if isinstance(exc, ApiError) else None
            await self._settle_send(
                SendFailed(
                    item.id, item.batch_id, "pending", reserve, status=status, message=str(exc)
                )
            )
            if not retry.is_throttle(exc):
                self._gate_not_created()
                return exc
            self._counters.throttled += 1
            assert isinstance(exc, ApiError)
            # The render cap (as many renders as the cap may be in flight) or a rate
            # limit (fewer, or none): the gate paces the first, the limiter's
            # request rate the second; one is never taken for the other.
            explained = self._wait and self._gate.throttled()
            if explained and exc.retry_after is None:
                return _GATED  # the render cap, and nothing said: the gate alone paces it
            self._limiter.on_throttle(exc.retry_after, ticket=ticket)
            return exc
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
        self._counters.failed += 1
        self._state.write_manifest(item, "failed", error=f"HTTP {exc.status}: {exc.message}")
        self._state.settle()
        if exc.status == PAYMENT_REQUIRED:
            self._state.halt(
                STOP_CREDITS, f"the account cannot pay for more (HTTP 402: {exc.message})"
            )
        return _SETTLED

    def _round_trip(self, seconds: float) -> None:
        """The gate judges places as they will be when a create arrives."""
        self._rtt = seconds if self._rtt is None else 0.8 * self._rtt + 0.2 * seconds
        self._gate.set_lead(self._rtt)

    async def _gave_up(self, item: ItemRecord, exc: ApiError | TransportError) -> None:
        """Retries ran out on a create that surely created nothing: `resume` retries it."""
        status = exc.status if isinstance(exc, ApiError) else None
        await self._writer.apply(
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
        self._counters.failed += 1
        self._state.write_manifest(item, "failed", error=str(exc))
        self._state.settle()

    async def _settle_send(self, op: SendFailed | Created) -> None:
        await self._writer.apply(op)
        self._reserved -= op.reserved
        self._state.notify_settled()

    def _gate_not_created(self) -> None:
        if self._wait:
            self._gate.not_created()

    # ------------------------------------------------------------------ budget

    def _reservation(self, item: ItemRecord) -> int:
        return max(item.estimate, self._observed.get(kind(item), 0))

    async def _await_first_charge(self, item: ItemRecord) -> None:
        """Under a budget, an estimate that is only a lower bound is not trusted
        for a whole wave of concurrent creates: the first item of its kind goes
        alone, and the others reserve what it was really charged."""
        if self._batch.budget is None or item.estimate_exact:
            return
        key = kind(item)
        while key not in self._observed:
            probe = self._probes.get(key)
            if probe is None:
                self._probes[key] = (item.id, anyio.Event())  # this item goes first
                return
            if probe[0] == item.id:
                return
            await probe[1].wait()

    def _probe_done(self, item: ItemRecord) -> None:
        """The first item of its kind was answered (charged or not): let the others look."""
        key = kind(item)
        probe = self._probes.get(key)
        if probe is not None and probe[0] == item.id:
            del self._probes[key]
            probe[1].set()

    async def _wait_for_budget(self, item: ItemRecord) -> bool:
        """The reservation did not fit. While our own reservations are out, or renders
        that may yet be refunded, wait for them and try again. Otherwise stop sending."""
        waiting_on = self._reserved > 0 or self._counters.rendering > 0
        if waiting_on and not self._state.halted():
            await self._state.wait_settled()
            return True
        self._state.halt(
            STOP_BUDGET,
            f"the budget of {self._batch.budget} credits has no room for the next item "
            f"(it needs about {self._reservation(item)})",
        )
        await self._state.release([item])
        return False
