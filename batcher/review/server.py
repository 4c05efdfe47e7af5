"""Running the review page under uvicorn: in the foreground for `batcher
review`, or on a background thread for tests.

The socket is bound before uvicorn starts, so the real port (port 0 picks a
free one) is in the URL printed. On loopback no token is needed (the Host
header is checked instead); on any other address a fresh random token is
made and is part of the URL.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

import uvicorn

from batcher.errors import ConfigError
from batcher.review.app import ReviewApp, ReviewTarget

DEFAULT_HOST: Final = "127.0.0.1"
STARTUP_TIMEOUT: Final = 10.0
SHUTDOWN_GRACE_SECONDS: Final = 2


@dataclass(frozen=True, slots=True)
class ReviewServer:
    """Where a running review server listens."""

    host: str  # as bound
    port: int
    token: str | None

    @property
    def url(self) -> str:
        """The URL to open: a name others can reach for a wildcard bind, the
        token included when there is one."""
        host = self.host
        if host in ("0.0.0.0", "::"):  # noqa: S104 - reading the bound address, not choosing it
            host = socket.gethostname()
        return self.url_at(host)

    def url_at(self, host: str) -> str:
        netloc = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        query = f"?token={self.token}" if self.token else ""
        return f"http://{netloc}/{query}"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket; ConfigError when the address cannot be used."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _app(target: ReviewTarget, host: str, port: int) -> tuple[ReviewApp, str | None]:
    if is_loopback(host):
        allowed = frozenset(
            f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]", host.lower())
        )
        return ReviewApp(target, token=None, allowed_hosts=allowed), None
    token = secrets.token_urlsafe(24)
    return ReviewApp(target, token=token, allowed_hosts=None), token


def _config(app: ReviewApp, log_level: str | None) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        ws="none",
        lifespan="off",
        interface="asgi3",
        access_log=False,
        log_config=None,  # the library configures no logging; the CLI does
        log_level=log_level,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )


def serve(
    target: ReviewTarget,
    *,
    host: str = DEFAULT_HOST,
    port: int = 0,
    on_ready: Callable[[ReviewServer], None],
) -> None:
    """Serve in the foreground until interrupted; `on_ready(server)` first."""
    sock = listen(host, port)
    try:
        bound_port = sock.getsockname()[1]
        app, token = _app(target, host, bound_port)
        on_ready(ReviewServer(host, bound_port, token))
        uvicorn.Server(_config(app, "warning")).run(sockets=[sock])
    finally:
        sock.close()


@contextmanager
def running_review(
    target: ReviewTarget, *, host: str = DEFAULT_HOST, port: int = 0
) -> Iterator[ReviewServer]:
    """A review server on a background thread for the `with` block."""
    sock = listen(host, port)
    bound_port = sock.getsockname()[1]
    app, token = _app(target, host, bound_port)
    server = uvicorn.Server(_config(app, None))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # handed to the caller's thread, re-raised there
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"batcher-review :{bound_port}", daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if failure or not thread.is_alive():
                raise RuntimeError("the review server did not start") from (
                    failure[0] if failure else None
                )
            if time.monotonic() > deadline:
                raise RuntimeError("the review server did not start in time")
            time.sleep(0.002)
        yield ReviewServer(host, bound_port, token)
    finally:
        server.should_exit = True
        if thread.is_alive():
            thread.join(STARTUP_TIMEOUT + SHUTDOWN_GRACE_SECONDS)
        sock.close()
    if failure:
        raise RuntimeError("the review server failed") from failure[0]
