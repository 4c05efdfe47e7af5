"""Following renders: when to look at each one, and what its end means.

    follow() / adopt() ──▶ schedule (a heap by due time) ──▶ pollers ──GET──▶ API
                                                               │
        complete: download the images, record the refund ◀─────┤
          (checked: every image there, an image, under the cap)
        error (refunded), retries left: create it again ◀──────┤ (to the senders)
        error, canceled, 404: the item failed ◀────────────────┘

A render this run created is looked at when the poll planner expects it done
(it learns render times as renders finish); one created earlier (adopted) is
looked at once at once: its age is unknown.

Every poll goes through the run's outage gate (batcher.run.outage): while
the API cannot be reached, polls wait and probe like creates, and an answer
to one resumes the sending. A poll that failed through its retries is looked
at again later, later each time (retry.poll_again). Once the outage outlasts
its tolerance, renders are left `submitted` for `resume`.

With the webhook receiver on (`--webhook-listen`), a verified event settles a
render like a poll answer (`on_event`), and polls are only the fallback for
a lost event (first after 60 s, then at widening gaps). Whichever comes
first, the event or a poll, settles the render; the other is ignored. An
event for a project not followed (yet) is kept a while: the create's answer
may still be on its way to being recorded.

A full disk (OutputError) stops the downloads and, through the run state, the
sending. The render whose images could not be saved, and every render still
followed, is handed back `submitted` with its project id: `resume` polls it
again, fetches fresh download URLs and pays nothing.

Each image is streamed to a hidden file in the output folder and checked (a
body, an image by its magic bytes, under the size cap) before it is put in
place under its final name, its extension taken from the bytes and, in a PNG,
its provenance written (batcher.run.provenance). A completed project with
fewer URLs than images ordered, or an unusable body, is asked again for fresh
URLs a few times; then the item fails with the reason (FAILURE_DOWNLOAD,
which `resume` polls again: the render was paid, it is never re-created).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import heapq
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batcher.client import retry
from batcher.client.limits import AdaptiveLimiter
from batcher.client.magic_hour import PROJECT_STATES, ProjectStatus
from batcher.errors import (
    ApiError,
    AuthError,
    BadDownloadError,
    BatcherError,
    ConnectError,
    DownloadExpiredError,
    MalformedResponseError,
    NotAnImageError,
    OutputError,
    TransportError,
)
from batcher.ledger import (
    FAILURE_DOWNLOAD,
    FAILURE_LOST,
    FAILURE_RENDER,
    ChargeSeen,
    ItemRecord,
    RenderFinished,
)
from batcher.run import log_context
from batcher.run.files import download_name, image_stem
from batcher.run.manifest_line import ImageFile, ManifestLine
from batcher.run.outage import Outage
from batcher.run.pacing import Planners, PollPlanner, RenderGate, fallback_delay
from batcher.run.provenance import finalize_image
from batcher.run.state import STOP_OUTPUT, ImageApi, RunState
from batcher.settings import DEFAULT_RENDER_TIMEOUT

log = logging.getLogger(__name__)

FINISHED = frozenset({"complete", "error", "canceled"})
KNOWN_STATES = frozenset(PROJECT_STATES)
# Looks at a completed project for usable images (the first, then fresh GETs
# after an expired URL or an unusable body) before the item fails.
DOWNLOAD_ROUNDS = 3
NOT_FOUND = 404
# Events for projects not followed (foreign ones, or early ones whose create is
# still being recorded): the latest this many are kept.
EARLY_EVENTS_KEPT = 10_000
# When nothing is left to create and this many renders or fewer are left, the
# run ends when the last is seen done: they are looked at more often.
CLOSING_RENDERS = 3
# A look not sampled comes up to this share of its delay later, at random.
POLL_SPREAD = 0.05
# A look held back by throttle pauses longer than this (or a tenth of the
# render's age) teaches nothing about render times.
PAUSE_TOLERANCE_S = 0.25


@dataclass(frozen=True, slots=True)
class Accepted:
    """A create's render as the gate took it on: its token and when (monotonic)."""

    token: int
    at: float


@dataclass(slots=True)
class _Render:
    """A render this run follows."""

    item: ItemRecord
    project_id: str
    charged: int | None  # credits charged (create, surcharges); None while unknown
    created_at: float  # monotonic time the create was accepted (or it was adopted)
    refunded: int = 0  # credits given back, as seen on polls this run
    polls: int = 0
    failed_polls: int = 0  # in a row, each through all its retries
    odd: bool = False  # an unknown status or an unusable answer was reported already
    last_pending_age: float | None = None  # seen unfinished this long after its create
    first_look: bool = False  # adopted by the pass that runs before anything is sent
    # Created by this run: its age is a render time the poll planner can learn from.
    # An adopted render was created who knows when.
    age_known: bool = True
    ended: bool = False  # settled (by a poll or an event): nothing more to do
    token: int | None = None  # its place at the render gate
    kind: tuple[str, str | None] = ("", None)  # model and resolution: its render times
    sampled: bool = True  # looked at several times, to learn render times from
    plan_seq: int = 0  # its latest place in the schedule; older places are void
    due: float = math.inf  # when that place comes up (monotonic)
    polling: bool = False  # handed to a poller, not back in the schedule yet


class Follower:
    """Polls every render handed to it until it ends, and records how it ended.

    `serve()` runs the schedule and the pollers (start it with `TaskGroup.start`:
    `follow` and `adopt` need it running); renders failed and refunded are sent
    again through the stream it is given.
    """

    def __init__(
        self,
        state: RunState,
        client: ImageApi,
        limiter: AdaptiveLimiter,
        gate: RenderGate,
        outage: Outage,
        *,
        concurrency: int,
        wait: bool,
        render_retries: int,
        out_dir: Path | None,
        render_timeout: float = DEFAULT_RENDER_TIMEOUT,
        batch_name: str = "",
        metadata: bool = True,
        listening: bool = False,
    ) -> None:
        self.planner = PollPlanner()  # render times over every kind
        self.planners = Planners(self.planner)
        self._rng = random.Random()
        self._listening = listening  # webhooks settle renders; polls are the fallback
        self._followed: dict[str, _Render] = {}  # by project id
        self._early: OrderedDict[str, ProjectStatus] = OrderedDict()
        self._state = state
        self._counters = state.counters
        self._client = client
        self._limiter = limiter
        self._gate = gate
        self._outage = outage
        self._pollers = max(4, concurrency)
        self._wait = wait
        self._render_retries = render_retries
        self._render_timeout = render_timeout
        self._out_dir = out_dir
        self._batch_name = batch_name  # written into each PNG's provenance
        self._metadata = metadata  # False: files stay as downloaded (--no-metadata)
        self._downloads = anyio.CapacityLimiter(max(2, min(concurrency, 16)))
        self._schedule: list[tuple[float, int, _Render]] = []
        self._seq = 0
        self._schedule_changed = anyio.Event()
        self._first_looks_left = 0
        self._first_looks_seen = anyio.Event()
        self._cannot_write: OutputError | None = None
        self._polls: MemoryObjectSendStream[_Render] | None = None
        self._resend: MemoryObjectSendStream[ItemRecord] | None = None
        self._tasks: anyio.abc.TaskGroup | None = None

    async def serve(
        self,
        resend: MemoryObjectSendStream[ItemRecord],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        polls_tx, polls_rx = anyio.create_memory_object_stream[_Render](math.inf)
        with polls_tx, polls_rx:
            self._polls, self._resend = polls_tx, resend
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                tasks.start_soon(self._release_due)
                for _ in range(self._pollers):
                    tasks.start_soon(self._poller, polls_rx)
                task_status.started()

    # ------------------------------------------------------------------ taking renders on

    def accepted(self, item: ItemRecord) -> Accepted:
        """A create of this run was just accepted: its render takes a place at the
        gate now, before the answer is recorded (which may take a while)."""
        kind = _kind(item)
        token = self._gate.created(
            lambda age: self.planners.of(kind).done_share(age),
            lambda: self.planners.of(kind).busy_floor(),
        )
        return Accepted(token, time.monotonic())

    def follow(
        self,
        item: ItemRecord,
        project_id: str,
        charged: int | None,
        accepted: Accepted,
    ) -> None:
        """A create of this run was accepted (`accepted()`) and recorded: follow
        its render."""
        self._counters.rendering += 1
        submitted = dataclasses.replace(
            item, state="submitted", project_id=project_id, attempts=item.attempts + 1
        )
        kind = _kind(item)
        render = _Render(
            submitted,
            project_id,
            charged,
            accepted.at,
            token=accepted.token,
            kind=kind,
            sampled=self.planners.sample_next(kind),
        )
        self._followed[project_id] = render
        if not self._event_came_early(render):
            self._plan(render)

    def adopt(
        self, items: Sequence[ItemRecord], charged: Mapping[str, int], *, first_look: bool
    ) -> None:
        """Renders created earlier (a previous run, a dead worker), already held for
        this run; `charged` is each project's net charge in the ledger."""
        tokens = self._gate.adopt(len(items))
        self._counters.rendering += len(items)
        if first_look:
            self._first_looks_left += len(items)
        for item, token in zip(items, tokens, strict=True):
            assert item.project_id is not None
            render = _Render(
                item,
                item.project_id,
                charged.get(item.project_id),
                time.monotonic(),
                first_look=first_look,
                age_known=False,
                token=token,
                kind=_kind(item),
            )
            self._followed[render.project_id] = render
            if not self._event_came_early(render):
                self._poll_now(render)  # age unknown: look now

    async def first_looks_done(self) -> None:
        """Every render adopted with `first_look` has been looked at once."""
        while self._first_looks_left > 0:
            await self._first_looks_seen.wait()

    # ------------------------------------------------------------------ webhook events

    def on_event(self, status: ProjectStatus) -> None:
        """A verified webhook event (or one another worker stored): the project as a
        poll would show it. Settles the render if it is followed here and not yet
        settled; otherwise it is kept a while, for a create still being recorded."""
        render = self._followed.get(status.project_id)
        if render is None:
            self._early[status.project_id] = status
            self._early.move_to_end(status.project_id)
            while len(self._early) > EARLY_EVENTS_KEPT:
                self._early.popitem(last=False)
            return
        if render.ended or status.status not in FINISHED or self._tasks is None:
            return
        self._tasks.start_soon(self._settle, render, status)

    def look_now(self, project_id: str) -> None:
        """An event said a render ended but not how (a payload without a usable
        project): poll it now instead of at its fallback time."""
        render = self._followed.get(project_id)
        if render is not None and not render.ended:
            self._schedule_at(time.monotonic(), render)

    def _event_came_early(self, render: _Render) -> bool:
        status = self._early.pop(render.project_id, None)
        if status is None or status.status not in FINISHED or self._tasks is None:
            return False
        self._tasks.start_soon(self._settle, render, status)
        return True

    async def _settle(self, render: _Render, status: ProjectStatus) -> None:
        """End a render from an event, exactly as a poll answer would."""
        self._first_look_seen(render)
        if self._cannot_write is not None or not self._end(render):
            return
        if render.age_known:
            age = time.monotonic() - render.created_at
            self.planners.observe(render.kind, age, age)  # the event came as it ended
        refunded = _refunded(render, status)  # judged on the charge before this event
        await self._see_charge(render, status)
        await self._ended(render, status, refunded=refunded)

    def _end(self, render: _Render) -> bool:
        """Mark a render settled; False when something settled it already."""
        if render.ended:
            return False
        render.ended = True
        self._followed.pop(render.project_id, None)
        self._close_in()
        return True

    # ------------------------------------------------------------------ the schedule

    def _plan(self, render: _Render) -> None:
        render.polling = False
        age = time.monotonic() - render.created_at
        planner = self.planners.of(render.kind)
        if self._listening:
            delay = fallback_delay(age, render.polls)
        elif render.sampled:
            delay = planner.next_delay(age, render.polls)
        else:
            # Renders created together are not all looked at in the same instant.
            delay = planner.sparse_delay(age, render.polls)
            delay += self._rng.uniform(0.0, POLL_SPREAD * delay)
        if self._closing():
            delay = min(delay, planner.closing_delay(age))
        self._schedule_at(time.monotonic() + delay, render)

    def _closing(self) -> bool:
        """The run waits only on its last few renders: nothing is left to create,
        so the first of them seen done is when the run ends (and polls, not
        webhooks, say so)."""
        return (
            not self._listening
            and len(self._followed) <= CLOSING_RENDERS
            and self._state.feeding_over
            and self._gate.quiet
        )

    def _close_in(self) -> None:
        """Look at the last renders at the closing pace from now on."""
        if not self._closing():
            return
        now = time.monotonic()
        for render in list(self._followed.values()):
            if render.ended or render.polling or not render.age_known:
                continue
            due = now + self.planners.of(render.kind).closing_delay(now - render.created_at)
            if due < render.due:
                self._schedule_at(due, render)

    def _schedule_at(self, due: float, render: _Render) -> None:
        if self._cannot_write is not None:
            self._poll_now(render)  # the pollers hand it back
            return
        self._seq += 1
        render.plan_seq = self._seq
        render.due = due
        heapq.heappush(self._schedule, (due, self._seq, render))
        if self._schedule[0][1] == self._seq:
            self._schedule_changed.set()

    def _poll_now(self, render: _Render) -> None:
        assert self._polls is not None, "serve() is not running"
        self._polls.send_nowait(render)

    async def _release_due(self) -> None:
        """Hand each render to the pollers when it is due."""
        while True:
            changed = self._schedule_changed = anyio.Event()
            now = time.monotonic()
            while self._schedule and self._schedule[0][0] <= now:
                _, seq, render = heapq.heappop(self._schedule)
                if not render.ended and seq == render.plan_seq:
                    render.polling = True
                    self._poll_now(render)
            timeout = self._schedule[0][0] - now if self._schedule else math.inf
            with anyio.move_on_after(timeout):
                await changed.wait()

    # ------------------------------------------------------------------ polls

    async def _poller(self, polls: MemoryObjectReceiveStream[_Render]) -> None:
        async for render in polls:
            await self._poll(render)

    async def _get_once(self, project_id: str) -> ProjectStatus:
        async with self._outage.admitted():
            self._counters.polls += 1
            try:
                status = await self._limiter.call(lambda: self._client.get_project(project_id))
            except ConnectError as exc:
                self._outage.unreachable(exc)
                if self._outage.given_up:
                    raise _GivenUp from exc
                raise
            except ApiError as exc:
                self._outage.reachable()
                if retry.is_throttle(exc):
                    self._counters.throttled += 1
                raise
            self._outage.reachable()
            return status

    async def _get(self, project_id: str) -> ProjectStatus:
        status: ProjectStatus = await retry.read(
            lambda: self._get_once(project_id), paced=True, about={"project_id": project_id}
        )
        return status

    async def _poll(self, render: _Render) -> None:
        if render.ended:  # an event settled it while it waited
            self._first_look_seen(render)
            return
        if self._cannot_write is not None:
            self._first_look_seen(render)
            if self._end(render):
                await self._let_go(render)
            return
        age = time.monotonic() - render.created_at
        try:
            with log_context.about(key=render.item.key, project_id=render.project_id):
                status = await self._get(render.project_id)
        except _GivenUp:
            # The API has been down too long: `resume` looks at it later.
            self._first_look_seen(render)
            await self._let_go(render)
            return
        except AuthError as exc:
            self._state.fail(exc)
            return
        except (ApiError, TransportError) as exc:
            self._first_look_seen(render)
            if _settled_meanwhile(render):
                return
            if isinstance(exc, ApiError) and exc.status == NOT_FOUND:
                self._end(render)
                await self._render_failed(render, None, "not_found", exc.message)
                return
            render.polls += 1
            render.failed_polls += 1
            again = retry.poll_again(render.failed_polls)
            # Once per render and outage: every failed poll of a long outage is noise.
            level = logging.WARNING if render.failed_polls == 1 else logging.DEBUG
            log.log(
                level,
                "poll failed; will try again in %.0f s",
                again,
                extra={"project_id": render.project_id, "error": str(exc)},
            )
            if isinstance(exc, MalformedResponseError):
                self._odd(render, f"unusable answer: {exc}")
            if await self._past_deadline(render, age):
                return
            self._schedule_at(time.monotonic() + again, render)
            return
        render.polls += 1
        render.failed_polls = 0
        self._first_look_seen(render)
        if _settled_meanwhile(render):  # an event settled it during the GET
            return
        refunded = _refunded(render, status)  # judged on the charge before this poll
        await self._see_charge(render, status)
        if status.status not in FINISHED:
            render.last_pending_age = age
            if not self._wait:
                # --no-wait: a resumed batch looks once, then leaves the render be.
                self._end(render)
                await self._let_go(render)
                return
            if status.status not in KNOWN_STATES:
                self._odd(render, f"unknown status {status.status!r}")
            if await self._past_deadline(render, age):
                return
            self._plan(render)
            return
        self._end(render)
        if render.age_known and render.sampled and not self._paused_meanwhile(render, age):
            self.planners.observe(render.kind, age, render.last_pending_age)
        await self._ended(render, status, refunded=refunded)

    def _paused_meanwhile(self, render: _Render, age: float) -> bool:
        """A throttle pause held this look back: its render time would be too long
        (a pause is never learned as a render time)."""
        since = render.created_at + (render.last_pending_age or 0.0)
        paused = self._limiter.paused_between(since, render.created_at + age)
        return paused > max(PAUSE_TOLERANCE_S, 0.1 * age)

    async def _ended(self, render: _Render, status: ProjectStatus, *, refunded: bool) -> None:
        """A finished render, from a poll or an event: complete, or failed (and
        `refunded`, as judged on the charge before this answer, then re-created)."""
        if status.status == "complete":
            await self._complete(render, status)
        else:
            code = status.error_code or status.status
            message = status.error_message or f"the render ended as {status.status}"
            await self._render_failed(render, status, code, message, refunded=refunded)

    async def _see_charge(self, render: _Render, status: ProjectStatus) -> None:
        """Record any change of the project's credits_charged (a surcharge, a refund,
        the charge the create's answer did not tell) as a credit row."""
        observed = status.credits_charged
        if observed is None:
            return
        if render.charged is not None and render.charged - render.refunded == observed:
            return
        item = render.item
        change = int(
            await self._state.writer.apply(
                ChargeSeen(item.id, item.batch_id, render.project_id, observed)
            )
            or 0
        )
        self._state.notify_settled()  # a reservation held for an unknown charge is free
        if change > 0:
            if render.charged is not None:
                self._state.notice(
                    "surcharge",
                    f"{item.key} (project {render.project_id}): {render.charged} -> "
                    f"{render.charged + change} credits",
                )
            render.charged = (render.charged or 0) + change
            self._counters.credits_charged += change
        elif change < 0:
            render.refunded -= change
            self._counters.credits_refunded -= change
            if render.charged is None:
                render.charged = observed - change
        elif render.charged is None:
            render.charged = observed

    def _odd(self, render: _Render, what: str) -> None:
        """An answer nobody can act on: said once per render; it counts against the deadline."""
        if not render.odd:
            render.odd = True
            self._state.notice(
                "odd_status", f"{render.item.key} (project {render.project_id}): {what}"
            )

    async def _past_deadline(self, render: _Render, age: float) -> bool:
        """At the render deadline the render is reported and left `submitted`:
        `resume` or `reconcile` looks at it again later."""
        if age < self._render_timeout:
            return False
        self._state.notice(
            "render_timeout",
            f"{render.item.key} (project {render.project_id}) after {age:.0f} s",
        )
        await self._let_go(render)
        return True

    def _first_look_seen(self, render: _Render) -> None:
        if render.first_look:
            render.first_look = False
            self._first_looks_left -= 1
            if self._first_looks_left <= 0:
                self._first_looks_seen.set()
                self._first_looks_seen = anyio.Event()

    def _render_left(self, render: _Render) -> None:
        """A render is no longer followed: its place under the render cap is free."""
        self._counters.rendering -= 1
        self._gate.finished(render.token)

    async def _let_go(self, render: _Render) -> None:
        """Stop following a render that has not ended: it stays `submitted`, for `resume`."""
        self._render_left(render)
        await self._state.release([render.item])

    # ------------------------------------------------------------------ how renders end

    async def _complete(self, render: _Render, status: ProjectStatus) -> None:
        self._render_left(render)
        refund = render.refunded  # recorded as it was seen (_see_charge)
        line = self._line(render, "complete", refunded=refund)
        files: tuple[ImageFile, ...] = ()
        if self._out_dir is not None:
            try:
                downloads = await self._download_all(render, status, self._out_dir, line)
            except OutputError as exc:
                await self._stop_downloads(render, exc)
                return
            except AuthError as exc:
                self._state.fail(exc)
                return
            files = downloads.saved
            if downloads.problem is not None:
                await self._download_failed(render, refund, files, downloads.problem)
                return
        await self._finish(render, "complete", files=tuple(f.saved() for f in files))
        self._counters.complete += 1
        self._counters.images += len(files)
        self._state.write_line(line.with_files(files))
        self._state.settle()

    async def _download_failed(
        self, render: _Render, refund: int, files: tuple[ImageFile, ...], problem: str
    ) -> None:
        """The render is done and paid, but its images could not all be had: the item
        fails with the reason, keeping what was saved; `resume` polls it again (fresh
        URLs) and never re-creates it."""
        message = f"download failed: {problem}"
        log.warning(
            "images not saved",
            extra={"key": render.item.key, "project_id": render.project_id, "error": problem},
        )
        await self._finish(
            render,
            "failed",
            failure=FAILURE_DOWNLOAD,
            message=message,
            files=tuple(f.saved() for f in files),
        )
        self._counters.failed += 1
        self._counters.images += len(files)
        self._state.write_line(
            self._line(render, "failed", refunded=refund, error=message).with_files(files)
        )
        self._state.settle()

    async def _stop_downloads(self, render: _Render, exc: OutputError) -> None:
        """The images cannot be saved: stop sending and downloading; every render
        still followed goes back `submitted`, so `resume` fetches it for nothing."""
        if self._cannot_write is None:
            self._cannot_write = exc
            self._state.halt(
                STOP_OUTPUT, f"{exc}; downloads stopped, renders left for `resume` to fetch"
            )
            while self._schedule:  # due now: the pollers hand them back
                _, _, waiting = heapq.heappop(self._schedule)
                if not waiting.ended:
                    self._poll_now(waiting)
        await self._state.release([render.item])

    async def _finish(self, render: _Render, state: str, **fields: Any) -> None:
        """Record how a followed render ended; budget it frees is then usable."""
        item = render.item
        await self._state.writer.apply(
            RenderFinished(item.id, item.batch_id, render.project_id, state, **fields)
        )
        self._state.notify_settled()

    async def _render_failed(
        self,
        render: _Render,
        status: ProjectStatus | None,
        code: str,
        message: str,
        *,
        refunded: bool = False,
    ) -> None:
        self._render_left(render)
        refund = render.refunded  # recorded as it was seen (_see_charge)
        item = render.item
        # Only a render the API says failed *and* refunded is cheap to create
        # again. A 404 (an eventually consistent read, a project deleted in the
        # web library), `canceled`, or an error with no refund seen were paid:
        # the item fails, and only --retry-failed creates it again.
        again = (
            refunded and item.render_failures < self._render_retries and not self._state.halted()
        )
        failure = FAILURE_RENDER if refunded else FAILURE_LOST
        if not refunded:
            log.warning(
                "render lost, paid and not refunded; not created again",
                extra={"key": item.key, "project_id": render.project_id, "code": code},
            )
        await self._finish(
            render,
            "pending" if again else "failed",
            failure=None if again else failure,
            code=code,
            message=message,
            count_render_failure=True,
        )
        if again:
            retried = dataclasses.replace(
                item, state="pending", render_failures=item.render_failures + 1, project_id=None
            )
            log.info(
                "render failed; creating it again",
                extra={"key": item.key, "project_id": render.project_id, "code": code},
            )
            # Still held: the senders take it like a new one. Not awaited here,
            # the send stream may be full and a poller must not wait on it.
            assert self._tasks is not None and self._resend is not None
            self._tasks.start_soon(self._resend.send, retried)
            return
        self._counters.failed += 1
        self._manifest(render, "failed", refunded=refund, error=f"{code}: {message}")
        self._state.settle()

    def _line(
        self, render: _Render, state: str, *, refunded: int = 0, error: str | None = None
    ) -> ManifestLine:
        return ManifestLine.of_item(
            render.item,
            state,
            project_id=render.project_id,
            charged=render.charged,
            refunded=refunded,
            error=error,
        )

    def _manifest(
        self, render: _Render, state: str, *, refunded: int = 0, error: str | None = None
    ) -> None:
        self._state.write_line(self._line(render, state, refunded=refunded, error=error))

    # ------------------------------------------------------------------ downloads

    async def _download_all(
        self, render: _Render, status: ProjectStatus, folder: Path, line: ManifestLine
    ) -> _Downloads:
        """Save every image of a completed render, checked: as many URLs as images
        ordered, each body non-empty, an image by its magic bytes and under the
        size cap. What fails is fetched again from a fresh GET of the project
        (new URLs), up to DOWNLOAD_ROUNDS looks in all; images already saved are
        kept. Raises OutputError (the disk) and AuthError; any other failure is
        the `problem` of the result."""
        item = render.item
        ordered = item.settings.image_count
        saved: dict[int, ImageFile] = {}
        problem = "no download was tried"
        for round_ in range(DOWNLOAD_ROUNDS):
            if round_:
                # Signed URLs expire, and a CDN can answer junk: a fresh GET gives new ones.
                try:
                    status = await self._get(render.project_id)
                except AuthError:
                    raise
                except (ApiError, TransportError, _GivenUp) as exc:
                    problem = f"polling for fresh download URLs failed: {exc}"
                    break
            urls = status.downloads
            if len(urls) > ordered:
                log.warning(
                    "the project lists more images than were ordered; saving %d",
                    ordered,
                    extra={"key": item.key, "project_id": render.project_id, "urls": len(urls)},
                )
            try:
                for index in range(ordered):
                    if index in saved:
                        continue
                    if index >= len(urls):
                        raise BadDownloadError(
                            f"the project lists {len(urls)} download URL(s) for {ordered} image(s)"
                        )
                    saved[index] = await self._save(item, urls[index].url, index, folder, line)
                return _Downloads(tuple(saved[i] for i in range(ordered)), None)
            except (ApiError, TransportError, BadDownloadError) as exc:
                if isinstance(exc, AuthError):
                    raise
                where = f"image {len(saved) + 1} of {ordered}" if ordered > 1 else "the image"
                problem = f"{where}: {_why(exc)}"
                log.info(
                    "download unusable; asking the project for fresh URLs",
                    extra={
                        "key": item.key,
                        "project_id": render.project_id,
                        "round": round_ + 1,
                        "error": problem,
                    },
                )
        return _Downloads(
            tuple(saved[i] for i in sorted(saved)),
            f"{problem} (after {DOWNLOAD_ROUNDS} looks at the project)",
        )

    async def _save(
        self, item: ItemRecord, url: str, index: int, folder: Path, line: ManifestLine
    ) -> ImageFile:
        """Download one image to a hidden file in the output folder, then put it in
        place under its final name (extension from its bytes, provenance written
        into a PNG unless metadata is off)."""
        stem = image_stem(item.ordinal, item.prompt, item.key, index)
        temporary = folder / download_name(stem)
        async with self._downloads:
            written = await self._fetch(url, temporary)
            try:
                if written == 0:
                    raise BadDownloadError("the body is empty")
                finalize = functools.partial(
                    finalize_image,
                    temporary,
                    folder / stem,
                    line,
                    batch=self._batch_name,
                    index=index,
                    metadata=self._metadata,
                )
                return await anyio.to_thread.run_sync(finalize)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_remove_quietly, temporary)
                raise

    async def _fetch(self, url: str, dest: Path) -> int:
        # Downloads go to the CDN, not the API: no limiter slot, plain backoff.
        written: int = await retry.read(
            lambda: self._client.download(url, dest), about={"path": str(dest)}
        )
        return written


class _GivenUp(BatcherError):
    """A poll found the API down past the outage tolerance: not worth retrying
    (not a TransportError, so the read policy does not retry it)."""


@dataclass(frozen=True, slots=True)
class _Downloads:
    saved: tuple[ImageFile, ...]  # in image order; all of them when `problem` is None
    problem: str | None  # why the images could not all be had


def _refunded(render: _Render, status: ProjectStatus | None) -> bool:
    """The API said the render failed (`error`) and gave the credits back."""
    if status is None or status.status != "error" or status.credits_charged is None:
        return False
    if status.credits_charged <= 0:
        return True
    return render.charged is not None and status.credits_charged < render.charged


def _why(exc: BatcherError) -> str:
    """A download failure in words, without the hidden file's path."""
    if isinstance(exc, NotAnImageError):
        return exc.reason
    if isinstance(exc, DownloadExpiredError):
        return f"the download URL was refused ({exc})"
    return str(exc)


def _kind(item: ItemRecord) -> tuple[str, str | None]:
    """Renders of one model and resolution take alike long."""
    return (item.settings.model, item.settings.resolution)


def _settled_meanwhile(render: _Render) -> bool:
    """Whether an event settled the render while a poll of it was awaited."""
    return render.ended


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
