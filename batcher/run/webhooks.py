"""The webhook receiver: `--webhook-listen HOST:PORT` serves the account's webhook
during a run (DESIGN.md, "Webhooks instead of polls").

    Magic Hour ──POST (any path)──▶ WebhookReceiver ──401 forged / stale / unsigned
                                          │ 200 at once, then
                                          ▼
                                    inbox (a stream) ──▶ batcher.run.inbox: ledger, follower

The receiver only checks and answers (batcher.run.webhook_verify does the
checking); every piece of work happens after the answer, in the run's task
group, so a slow ledger never makes Magic Hour wait past its 10 s. It is an
ASGI app on uvicorn in the run's own event loop; the socket is bound before
the run starts, so a port in use is bad input (exit 2) with nothing sent.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.abc
import uvicorn
from anyio.streams.memory import MemoryObjectSendStream

from batcher.errors import ConfigError
from batcher.run.state import RunCounters
from batcher.run.webhook_verify import Event, verify

log = logging.getLogger(__name__)

WEBHOOK_SECRET_ENV: Final = "MAGIC_HOUR_WEBHOOK_SECRET"  # noqa: S105 (a variable's name)
BODY_MAX_BYTES: Final = 1024 * 1024  # an event is a project document: a few KB
SHUTDOWN_S: Final = 2.0

Scope = Mapping[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]


@dataclass(frozen=True, slots=True)
class WebhookListen:
    """Where to listen and the key the events are signed with (never shown)."""

    host: str
    port: int
    secret: str = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets); ConfigError naming the flag."""
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(
            f"--webhook-listen: {text!r} is not HOST:PORT (for example 127.0.0.1:8787)"
        )
    return host, int(port_text)


def webhook_settings(listen: str | None, environ: Mapping[str, str]) -> WebhookListen | None:
    """The receiver's settings, checked before anything is sent: the secret must be
    set and not empty."""
    if listen is None:
        return None
    host, port = parse_listen(listen)
    secret = environ.get(WEBHOOK_SECRET_ENV, "")
    if not secret.strip():
        raise ConfigError(
            f"--webhook-listen needs the webhook's signing secret in {WEBHOOK_SECRET_ENV} "
            "(the account's webhook settings show it); nothing was sent"
        )
    return WebhookListen(host, port, secret)


@contextlib.contextmanager
def listening_socket(listen: WebhookListen) -> Iterator[socket.socket]:
    """The receiver's socket, bound now: a port in use is refused before any send."""
    try:
        infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"--webhook-listen {listen.host}:{listen.port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"--webhook-listen {listen.host}:{listen.port}: cannot listen there "
            f"({exc.strerror or exc}); nothing was sent"
        ) from exc
    try:
        yield sock
    finally:
        sock.close()


@dataclass(frozen=True, slots=True)
class Refused:
    """A delivery that got 401, for the inbox to count."""

    reason: str


Arrival = Event | Refused


class WebhookReceiver:
    """The ASGI app and its server. `serve()` runs until cancelled; every verified
    event (and every refusal) is put on `arrivals` after its answer."""

    def __init__(
        self,
        listen: WebhookListen,
        sock: socket.socket,
        arrivals: MemoryObjectSendStream[Arrival],
        counters: RunCounters,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._listen = listen
        self._socket = sock
        self._arrivals = arrivals
        self._counters = counters
        self._clock = clock

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        config = uvicorn.Config(
            self,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=int(SHUTDOWN_S),
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        # Not server.serve(): it would take over SIGINT/SIGTERM, which are the run's.
        await server.startup(sockets=[self._socket])
        log.info(
            "webhook receiver listening",
            extra={"event": "webhooks.listening", "port": self.port},
        )
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_S + 1):
                await server.shutdown()

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _answer(send, 405, b"POST only")
            return
        body = await _read_body(receive)
        if body is None:
            await _answer(send, 413, b"body too large")
            return
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", ())
        }
        verdict = verify(headers, body, self._listen.secret, now=self._clock())
        if verdict.refused is not None:
            self._counters.webhook_rejected += 1
            log.warning(
                "webhook delivery refused (%s)",
                verdict.refused,
                extra={"event": "webhooks.refused", "reason": verdict.refused},
            )
            await _answer(send, 401, b"signature not verified")
            self._put(Refused(verdict.refused))
            return
        self._counters.webhook_events += 1
        await _answer(send, 200, b"ok")
        if verdict.event is not None:
            self._put(verdict.event)

    def _put(self, arrival: Arrival) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._arrivals.send_nowait(arrival)


async def _read_body(receive: Receive) -> bytes | None:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > BODY_MAX_BYTES:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _answer(send: Send, status: int, text: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(text))],
        }
    )
    await send({"type": "http.response.body", "body": text})


# The arrivals stream never blocks the answer: it is unbounded, and the inbox
# drains it as fast as the ledger takes the rows.
UNBOUNDED: Final = math.inf
