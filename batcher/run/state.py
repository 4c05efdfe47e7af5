"""What the parts of one run share, and nothing else.

The feeder, the sender and the follower (batcher.run.feeder, .sender,
.follower) keep their own bookkeeping to themselves. They meet here:

- `counters`: live numbers for progress displays;
- holding: a part holds every item it takes on until the item is settled for
  this run; the run is done once the feeder has no more and nothing is held,
  or at once when it is interrupted or a part fails;
- stopping: `halt()` sends nothing more (renders already created are still
  followed) and keeps the first reason;
- settling: a sender waiting for budget sleeps until a part says that some
  was settled (`notify_settled()`);
- the ledger writer every state change goes through (group commit), and the
  manifest, where every item that finished this run gets a line.

It also names what the parts need of the API client (`ImageApi`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import anyio.to_thread

from batcher.client.magic_hour import CreatedProject, ProjectStatus
from batcher.errors import AuthError, LedgerLostError, OutputError
from batcher.ledger import ItemRecord, LedgerWriter, ReleaseClaims
from batcher.run.files import Manifest
from batcher.run.manifest_line import ImageFile, ManifestLine
from batcher.run.notices import Notices
from batcher.settings import API_KEY_ENV

log = logging.getLogger(__name__)

T = TypeVar("T")

# Why a run stopped sending before every item was sent.
STOP_BUDGET = "budget"
STOP_CREDITS = "credits"
STOP_UNREACHABLE = "unreachable"
STOP_INTERRUPTED = "interrupted"
STOP_AUTH = "auth"
STOP_OUTPUT = "output"  # the output folder cannot be written (a full disk)
STOP_DOUBT = "doubt"  # creates kept coming back in doubt (batcher.run.breaker)
STOP_STALLED = "stalled"  # no progress for --stall-timeout (batcher.run.stall)
STOP_LEDGER = "ledger"  # the ledger was lost: away past --ledger-hold, or its file went away


class ImageApi(Protocol):
    """What the run needs of the API client (batcher.client.magic_hour.MagicHourClient)."""

    async def create_image(self, body: Mapping[str, Any]) -> CreatedProject: ...

    async def get_project(self, project_id: str) -> ProjectStatus: ...

    async def download(self, url: str, dest: Path) -> int: ...


@dataclass
class RunCounters:
    """Live numbers for progress displays; only the run's parts write them."""

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
    webhook_events: int = 0  # verified webhook events received (batcher.run webhooks)
    webhook_rejected: int = 0  # webhook deliveries refused (bad signature or stale)
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


async def in_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking ledger call, off the event loop."""
    return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs))


class RunState:
    """The shared state of one run. Created by the wiring (batcher.run.batch_run)."""

    def __init__(
        self, writer: LedgerWriter, manifest: Manifest, sent: Manifest | None = None
    ) -> None:
        self.counters = RunCounters()
        self.writer = writer
        self.stopped: str | None = None  # STOP_*, the first reason sending stopped
        self.stop_detail: str | None = None
        # Raised by the run once it has stopped: the key rejected, the ledger lost.
        self.fatal: AuthError | LedgerLostError | None = None
        self.notices = Notices()  # odd answers met, for the summary's warnings
        self._manifest = manifest
        self._sent = sent
        self._manifest_failed = False
        self._halted = False
        self._held = 0
        self._feeding = True
        self._done = anyio.Event()
        # Made when someone waits (or a halt sets it): a settle with nobody
        # waiting, the common case, costs no event. None: a fresh, unset one.
        self._settled: anyio.Event | None = None

    # ------------------------------------------------------------------ stopping

    def halted(self) -> bool:
        """Nothing more is sent. (A method: it changes while a caller awaits.)"""
        return self._halted

    def halt(self, reason: str, detail: str) -> None:
        """Send nothing more; renders already created are still followed."""
        if self.stopped is None:
            self.stopped, self.stop_detail = reason, detail
            log.warning("sending stopped (%s)", reason, extra={"reason": reason, "detail": detail})
        self._halted = True
        self._settled_event().set()  # a sender waiting for budget: stop waiting

    def interrupt(self) -> None:
        """Stop now: the wiring cancels the parts (creates on the wire are recorded)."""
        self.halt(STOP_INTERRUPTED, "interrupted by the user")
        self._done.set()

    def stop(self, reason: str, detail: str) -> None:
        """Stop now, not by the user's hand: as `interrupt()`, with its own reason."""
        self.halt(reason, detail)
        self._done.set()

    def fail(self, exc: AuthError | LedgerLostError) -> None:
        """The key was rejected after the run began (revoked?), or the ledger was
        lost: nothing more can work. Stop everything (creates on the wire are still
        recorded); the run raises it, as a one-line error (a rejected key's names
        the key's variable)."""
        if self.fatal is None:
            if isinstance(exc, LedgerLostError):
                self.fatal = exc
            else:
                self.fatal = AuthError(
                    exc.status,
                    f"{exc.message}. The API rejected the key in {API_KEY_ENV} during the "
                    "run (revoked?): sending stopped, creates in flight were recorded. "
                    "Set a valid key, then `batcher resume` the batch",
                )
        self.halt(STOP_LEDGER if isinstance(exc, LedgerLostError) else STOP_AUTH, str(exc))
        self._done.set()

    def notice(self, kind: str, example: str) -> None:
        """An odd answer the summary will tell of (batcher.run.notices); logged now."""
        self.notices.add(kind, example)
        log.warning("%s: %s", kind, example, extra={"event": f"run.{kind}"})

    # ------------------------------------------------------------------ holding

    def hold(self, count: int = 1) -> None:
        self._held += count

    def settle(self, count: int = 1) -> None:
        """Items held are settled for this run: answered, recorded, or handed back."""
        self._held -= count
        self._check_done()

    @property
    def feeding_over(self) -> bool:
        """The feeder hands out nothing more."""
        return not self._feeding

    def feeding_done(self) -> None:
        """The feeder will hand out nothing more."""
        self._feeding = False
        self._check_done()

    def _check_done(self) -> None:
        if not self._feeding and self._held <= 0:
            self._done.set()

    async def wait_done(self) -> None:
        await self._done.wait()

    async def release(self, items: Sequence[ItemRecord]) -> None:
        """Hand claims back, each item keeping its state, and settle them."""
        if items:
            await self.writer.apply(ReleaseClaims(tuple(item.id for item in items)))
            self.settle(len(items))

    # ------------------------------------------------------------------ budget

    def notify_settled(self) -> None:
        """A reservation or a render was settled: budget may have been freed."""
        if self._settled is not None:
            self._settled.set()
            self._settled = None

    async def wait_settled(self) -> None:
        await self._settled_event().wait()

    def _settled_event(self) -> anyio.Event:
        if self._settled is None:
            self._settled = anyio.Event()
        return self._settled

    # ------------------------------------------------------------------ manifest

    def write_manifest(
        self,
        item: ItemRecord,
        state: str,
        *,
        project_id: str | None = None,
        charged: int | None = 0,
        refunded: int = 0,
        files: Sequence[ImageFile] = (),
        error: str | None = None,
    ) -> None:
        """One line for an item that finished this run (an item never created has
        no project and was charged nothing)."""
        self.write_line(
            ManifestLine.of_item(
                item,
                state,
                project_id=project_id,
                charged=charged,
                refunded=refunded,
                files=files,
                error=error,
            )
        )

    def write_sent(self, item: ItemRecord, project_id: str, charged: int | None) -> None:
        """One line for an item the API accepted, in the sent log beside the
        manifest: a ledger lost from here on is rebuilt from it (recover)."""
        if self._sent is not None:
            line = ManifestLine.of_item(item, "submitted", project_id=project_id, charged=charged)
            self._write(line.as_json(), self._sent)

    def write_line(self, line: ManifestLine) -> None:
        """Append `line` to the manifest. A line that cannot be written is warned
        about once, never fatal: the ledger holds the same facts."""
        self._write(line.as_json(), self._manifest)

    def _write(self, entry: dict[str, Any], to: Manifest) -> None:
        try:
            to.write(entry)
        except OutputError as exc:
            if not self._manifest_failed:
                self._manifest_failed = True
                log.warning(
                    "%s; the manifest misses items from here on (the ledger has them all)",
                    exc,
                    extra={"event": "manifest.failed", "path": exc.path},
                )

    def close(self) -> None:
        self._manifest.close()
        if self._sent is not None:
            self._sent.close()
