"""Running the sandbox under uvicorn: in the foreground for `batcher sandbox`,
or on a background thread for tests and `batcher run --sandbox`.

Either way we bind and listen on the socket ourselves before uvicorn starts,
so the real port (the system picks one for port 0) is known and connectable
at once: clients that connect early wait in the backlog.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import uvicorn

from batcher.errors import ConfigError
from batcher.sandbox.app import SandboxApp
from batcher.sandbox.clock import Clock
from batcher.sandbox.config import SandboxConfig
from batcher.sandbox.emulator import Emulator, JournalEntry, SandboxStats
from batcher.sandbox.webhooks import WebhookDelivery

BACKLOG: Final = 4096  # benchmarks open many connections at once
KEEP_ALIVE_SECONDS: Final = 75  # longer than clients' idle pools keep a connection
STARTUP_TIMEOUT: Final = 10.0
SHUTDOWN_GRACE_SECONDS: Final = 3  # in-flight requests (a latency sleep) may finish


class SandboxHandle:
    """A running sandbox, as a test or the runner sees it."""

    def __init__(self, emulator: Emulator, base_url: str) -> None:
        self.emulator = emulator
        self.base_url = base_url

    @property
    def key(self) -> str:
        return self.emulator.config.key

    @property
    def config(self) -> SandboxConfig:
        """The settings now, runtime changes included."""
        return self.emulator.config

    @property
    def clock(self) -> Clock:
        """The emulator's clock: a `ManualClock` given to `running_sandbox` moves it."""
        return self.emulator.clock

    @property
    def account_credits(self) -> int:
        return self.emulator.credits

    def journal(self) -> list[JournalEntry]:
        return self.emulator.journal()

    def stats(self) -> SandboxStats:
        return self.emulator.stats()

    def webhooks(self) -> list[WebhookDelivery]:
        """Every webhook delivery so far, with each attempt and its answer."""
        return self.emulator.webhooks()

    def set_faults(self, **fields: Any) -> dict[str, Any]:
        """Change runtime settings by SandboxConfig field name; returns them all."""
        return self.emulator.set_faults(fields)

    def reset_faults(self) -> dict[str, Any]:
        return self.emulator.reset_faults()

    def expire_downloads(self) -> None:
        self.emulator.expire_downloads()

    def __repr__(self) -> str:  # never the key
        return f"SandboxHandle({self.base_url})"


def _emulator(config: SandboxConfig, clock: Clock | None = None) -> Emulator:
    try:
        return Emulator(config, clock=clock)
    except ValueError as exc:  # a setting the catalog rejects, such as an unknown tier
        raise ConfigError(str(exc)) from None


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket; ConfigError when the address cannot be used."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    """The base URL a client on this machine uses to reach `sock`."""
    host, port = sock.getsockname()[:2]
    if host == "0.0.0.0":  # noqa: S104 - reading the bound address, not choosing it
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_config(app: SandboxApp, *, log_level: str | None = None) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools",
        ws="none",
        interface="asgi3",
        lifespan="on",  # starts and stops the scheduler (render ends, webhooks)
        access_log=False,
        log_config=None,  # the library configures no logging; the CLI does
        log_level=log_level,
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        backlog=BACKLOG,
    )


def serve(config: SandboxConfig, on_ready: Callable[[str, Emulator], None]) -> None:
    """Serve in the foreground until interrupted; `on_ready(base_url, emulator)` first."""
    emulator = _emulator(config)
    sock = listen(config.host, config.port)
    base_url = url_of(sock)
    app = SandboxApp(emulator, base_url=base_url)
    try:
        on_ready(base_url, emulator)
        uvicorn.Server(uvicorn_config(app, log_level="warning")).run(sockets=[sock])
    finally:
        app.stop()
        sock.close()


@contextmanager
def running_sandbox(
    config: SandboxConfig | None = None, *, clock: Clock | None = None
) -> Iterator[SandboxHandle]:
    """A sandbox on a free loopback port (or config.host/port) for the `with` block.

    uvicorn runs its own event loop on a background thread; on exit it is
    asked to stop, finishes the requests in progress and closes every
    connection, and the thread is joined. `clock` (a `ManualClock` in tests)
    replaces the system clock: renders, URL expiry and webhook retries then
    move only when it does (and webhook timestamps are its wall time, so a
    receiver checking freshness against the real time will refuse them).
    """
    config = config or SandboxConfig()
    emulator = _emulator(config, clock)
    sock = listen(config.host, config.port)
    base_url = url_of(sock)
    app = SandboxApp(emulator, base_url=base_url)
    server = uvicorn.Server(uvicorn_config(app))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # handed to the caller's thread, re-raised there
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"batcher-sandbox {base_url}", daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if failure or not thread.is_alive():
                raise RuntimeError("the sandbox server did not start") from (
                    failure[0] if failure else None
                )
            if time.monotonic() > deadline:
                raise RuntimeError("the sandbox server did not start in time")
            time.sleep(0.002)
        yield SandboxHandle(emulator, base_url)
    finally:
        app.stop()  # endless and dripping answers end now, not after the grace period
        server.should_exit = True
        if thread.is_alive():
            thread.join(STARTUP_TIMEOUT + SHUTDOWN_GRACE_SECONDS)
        sock.close()
    if failure:
        raise RuntimeError("the sandbox server failed") from failure[0]
