"""The sandbox's alarm clock: settles renders at their end time and sends webhooks.

Renders are lazy (a status is computed when asked), but a webhook must leave
when a render ends even if nobody polls. This task lives in the server's
event loop. It calls `Emulator.tick()`, which settles what has ended,
queues the events and hands out the attempts due now, then sleeps until
the `wake_at` it was told (the next render end or retry, on the emulator's
clock) or until it is woken: by a create whose render ends sooner, by a
changed setting, by a `ManualClock` that moved, or by an attempt's answer.

Each attempt is its own task: a slow receiver (it has 10 s) delays no
other delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Final

import httpx

from batcher.sandbox.emulator import Emulator
from batcher.sandbox.webhooks import RECEIVER_DEADLINE, Outgoing, signed_headers

logger = logging.getLogger(__name__)

MAX_CONCURRENT_SENDS: Final = 64
ERROR_TEXT_LIMIT: Final = 200


class Scheduler:
    """Started and stopped by the app's lifespan, in the server's event loop."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator
        self._clock = emulator.clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._woken: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._limit: asyncio.Semaphore | None = None
        self._unsubscribe: Callable[[], None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._woken = asyncio.Event()
        self._limit = asyncio.Semaphore(MAX_CONCURRENT_SENDS)
        # No redirects: a receiver answering 3xx has not taken the event.
        self._client = httpx.AsyncClient(timeout=RECEIVER_DEADLINE, follow_redirects=False)
        self._emulator.on_wake = self.wake
        subscribe = getattr(self._clock, "subscribe", None)  # a ManualClock tells when it moves
        if callable(subscribe):
            self._unsubscribe = subscribe(self.wake)
        self._task = asyncio.create_task(self._run(), name="sandbox scheduler")

    async def stop(self) -> None:
        self._emulator.on_wake = None
        if self._unsubscribe is not None:
            self._unsubscribe()
        tasks = [task for task in (self._task, *self._sends) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()

    def wake(self) -> None:
        """Look again now; callable from any thread."""
        woken, loop = self._woken, self._loop
        if woken is None or loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            woken.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(woken.set)

    async def _run(self) -> None:
        assert self._woken is not None
        woken = self._woken
        while True:
            woken.clear()  # before the tick: a wake-up during it is not lost
            try:
                tick = self._emulator.tick()
            except Exception:  # a bug must not stop every later webhook; say it loudly
                logger.exception("sandbox scheduler: tick failed")
                await asyncio.sleep(1.0)
                continue
            for outgoing in tick.outgoing:
                task = asyncio.create_task(self._send(outgoing))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)
            if tick.wake_at is None:
                await woken.wait()
                continue
            delay = tick.wake_at - self._clock.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), delay)

    async def _send(self, outgoing: Outgoing) -> None:
        assert self._client is not None and self._limit is not None
        secret = self._emulator.webhook_secret or ""
        status: int | None = None
        error: str | None = None
        async with self._limit:
            sent_at, sent_wall = self._clock.monotonic(), self._clock.wall()
            timestamp = int(sent_wall)
            headers = signed_headers(secret, timestamp, outgoing.body)
            try:
                response = await self._client.post(
                    outgoing.url, content=outgoing.body, headers=headers
                )
                status = response.status_code
            except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_LIMIT]
        self._emulator.record_webhook(
            outgoing.delivery_id,
            timestamp,
            status,
            error,
            sent_at=sent_at,
            sent_wall=sent_wall,
        )
        self.wake()  # a failure is due again later: the next tick must know
