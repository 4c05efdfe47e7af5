"""The sandbox's HTTP face: a raw ASGI app over `Emulator`.

No web framework: a request is a dict lookup (or one prefix test) to find
its route, at most one `receive` for the body, one call into the emulator and
two `send`s. That keeps the server's CPU cost per create far below what any
Python client can spend producing the request, so the sandbox is never the
bottleneck of the runner's benchmarks. Nothing is logged per request.

Routes (everything else is a 404, a known path with another method a 405):

    POST   /v1/ai-image-generator          create (billable)
    GET    /v1/image-projects/{id}         poll
    DELETE /v1/image-projects/{id}         delete
    GET    /v1/account                     balance and tier
    GET    /_sandbox/files/{id}/{n}.png    a signed download URL, no bearer needed
    GET    /_sandbox/journal               every accepted create
    GET    /_sandbox/stats                 request counters and credits
    GET    /_sandbox/webhooks              every webhook delivery and its attempts
    GET    /_sandbox/faults                the runtime settings
    POST   /_sandbox/faults                change some of them (JSON object)
    POST   /_sandbox/faults/reset          back to the starting settings
    POST   /_sandbox/expire-downloads      expire every URL issued so far

The ASGI lifespan starts and stops the scheduler (scheduler.py) that ends
renders on time and sends the webhooks.

`/v1/` requests get the latency, then the rate limit and the bearer check;
`/_sandbox/` ones none of that. Counters cover /v1/ and file downloads, not
the inspection endpoints, so reading the stats does not change them.

Inspection JSON:

    journal  {"entries": [{"id", "time", "name", "body", "model", "image_count",
                           "credits_charged", "credits_refunded", "credits_surcharged",
                           "credits_net", "status", "outcome", "enabled", "dropped",
                           "garbled"}], "credits": balance}
    stats    {"requests": {"POST /v1/ai-image-generator": {"200": n, "dropped": n}, ...},
              "creates", "dropped", "in_flight", "credits", "credits_charged",
              "credits_refunded", "credits_surcharged", "rate_limit_429s",
              "render_cap_429s", "garbled", "poll_404s", "bad_download_gets",
              "webhooks": {"events", "deliveries", "pending", "sending",
                           "delivered", "failed", "dropped", "attempts"}}
    webhooks {"url", "deliveries": [{"id", "event_id", "type", "project_id",
              "foreign", "copy", "state", "queued_at", "payload",
              "attempts": [{"at", "after", "timestamp", "status", "error"}]}]}
    faults   {field: value} for every SandboxConfig field in RUNTIME_FIELDS;
             a POST answers the same after the change, or 400 naming the field
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

from batcher.sandbox.emulator import FILES_PREFIX, Emulator, ImageJob, Reply, message_reply
from batcher.sandbox.faults import HTML_PAGE
from batcher.sandbox.images import CONTENT_TYPES, ImageRenderer
from batcher.sandbox.replies import HTML_TYPE, JSON_TYPE, Drip, Endless
from batcher.sandbox.scheduler import Scheduler

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# A route's handler: the request, the path parameter ("" for fixed paths) -> the answer.
Handler = Callable[[Scope, Receive, str], Awaitable["Reply | ImageJob"]]

CREATE_PATH: Final = "/v1/ai-image-generator"
PROJECTS_PREFIX: Final = "/v1/image-projects/"
ACCOUNT_PATH: Final = "/v1/account"
DROPPED: Final = "dropped"  # the counter "status" of a create whose connection was closed

_JSON: Final = (b"content-type", JSON_TYPE)
_CACHE_FILE: Final = (b"cache-control", b"private, max-age=86400")
_NO_BODY: Final = frozenset((204, 304))  # statuses that carry no body and no framing
STREAM_CHUNK: Final = 256 * 1024  # bytes per send of an endless or huge body


@dataclass(frozen=True, slots=True)
class _Route:
    template: str
    handlers: Mapping[str, Handler]
    api: bool  # a /v1/ route: latency, rate limit, bearer auth
    counted: bool  # shows in the request counters
    labels: Mapping[str, str]  # method -> "METHOD template", precomputed for the counters
    allow: bytes  # the Allow header of a 405


class SandboxApp:
    """ASGI 3 application serving one `Emulator`."""

    def __init__(
        self,
        emulator: Emulator,
        renderer: ImageRenderer | None = None,
        *,
        base_url: str | None = None,
    ) -> None:
        self.emulator = emulator
        self.renderer = renderer or ImageRenderer()
        self.scheduler = Scheduler(emulator)
        if base_url is not None:  # where webhook payloads' download URLs point
            emulator.set_event_host(base_url.split("://", 1)[-1])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None  # set on stop: endless streams end
        self._exact: dict[str, _Route] = {}
        self._prefixed: list[tuple[str, _Route]] = []
        self._add(CREATE_PATH, {"POST": self._create}, api=True)
        self._add(ACCOUNT_PATH, {"GET": self._account}, api=True)
        self._add(
            PROJECTS_PREFIX + "{id}",
            {"GET": self._project, "DELETE": self._delete},
            api=True,
            prefix=PROJECTS_PREFIX,
        )
        self._add(FILES_PREFIX + "{id}/{n}.png", {"GET": self._file}, prefix=FILES_PREFIX)
        self._add("/_sandbox/journal", {"GET": self._journal}, counted=False)
        self._add("/_sandbox/stats", {"GET": self._stats}, counted=False)
        self._add("/_sandbox/webhooks", {"GET": self._webhooks}, counted=False)
        self._add(
            "/_sandbox/faults", {"GET": self._faults, "POST": self._set_faults}, counted=False
        )
        self._add("/_sandbox/faults/reset", {"POST": self._reset_faults}, counted=False)
        self._add("/_sandbox/expire-downloads", {"POST": self._expire}, counted=False)

    def _add(
        self,
        template: str,
        handlers: Mapping[str, Handler],
        *,
        api: bool = False,
        counted: bool = True,
        prefix: str | None = None,
    ) -> None:
        route = _Route(
            template=template,
            handlers=handlers,
            api=api,
            counted=counted,
            labels={method: f"{method} {template}" for method in handlers},
            allow=", ".join(handlers).encode("ascii"),
        )
        if prefix is None:
            self._exact[template] = route
        else:
            self._prefixed.append((prefix, route))

    def stop(self) -> None:
        """Ask never-ending answers to end: the server is about to stop. Any thread."""
        loop, closing = self._loop, self._closing
        if loop is not None and closing is not None and not loop.is_closed():
            loop.call_soon_threadsafe(closing.set)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._loop = asyncio.get_running_loop()
                self._closing = asyncio.Event()
                await self.scheduler.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.scheduler.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets are not served
            return
        method: str = scope["method"]
        path: str = scope["path"]
        parameter = ""
        route = self._exact.get(path)
        if route is None:
            for prefix, candidate in self._prefixed:
                if path.startswith(prefix) and len(path) > len(prefix):
                    parameter = path[len(prefix) :]
                    route = candidate
                    break
        if route is None:
            await _send_reply(send, _NOT_FOUND)
            self.emulator.count(f"{method} *", 404)
            return
        handler = route.handlers.get(method)
        label = route.labels.get(method) or f"{method} {route.template}"
        if handler is None:
            reply = Reply(405, _METHOD_NOT_ALLOWED.body, ((b"allow", route.allow),))
            await _send_reply(send, reply)
            if route.counted:
                self.emulator.count(label, 405)
            return
        if route.api:
            if self.emulator.latency:
                await asyncio.sleep(self.emulator.latency)
            refusal = self.emulator.admit(_header(scope, b"authorization"))
            if refusal is not None:
                await _send_reply(send, refusal)
                self.emulator.count(label, refusal.status)
                return
        answer = await handler(scope, receive, parameter)
        if isinstance(answer, ImageJob):
            await self._send_image(receive, send, answer)
            status: int | str = 200
        elif answer.drop:
            await _drop(receive, send)
            status = DROPPED
        elif answer.stream is not None:
            await self._send_stream(receive, send, answer)
            status = answer.status
        else:
            await _send_reply(send, answer)
            status = answer.status
        if route.counted:
            self.emulator.count(label, status)

    # --- /v1/ ------------------------------------------------------------------

    async def _create(self, scope: Scope, receive: Receive, parameter: str) -> Reply:
        return self.emulator.create(await _read_body(receive))

    async def _project(self, scope: Scope, receive: Receive, parameter: str) -> Reply:
        if "/" in parameter:
            return _NOT_FOUND
        return self.emulator.project(parameter, _host(scope))

    async def _delete(self, scope: Scope, receive: Receive, parameter: str) -> Reply:
        if "/" in parameter:
            return _NOT_FOUND
        return self.emulator.delete(parameter)

    async def _account(self, scope: Scope, receive: Receive, parameter: str) -> Reply:
        return self.emulator.account()

    # --- files -----------------------------------------------------------------------

    async def _file(self, scope: Scope, receive: Receive, parameter: str) -> Reply | ImageJob:
        return self.emulator.download(parameter, scope.get("query_string", b""))

    async def _send_image(self, receive: Receive, send: Send, job: ImageJob) -> None:
        if job.bad == "html":
            await _send_reply(send, Reply(200, HTML_PAGE, content_type=HTML_TYPE))
            return
        content_type = CONTENT_TYPES[job.image_format].encode("ascii")
        if job.bad == "empty-body":
            await _send_reply(send, Reply(200, b"", content_type=content_type))
            return
        data = self.renderer.image(job)
        if job.bad == "huge":
            await self._send_huge(receive, send, data, content_type, job.huge_bytes)
            return
        headers = [
            (b"content-type", content_type),
            (b"content-length", b"%d" % len(data)),
            _CACHE_FILE,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _send_huge(
        self, receive: Receive, send: Send, start: bytes, content_type: bytes, total: int
    ) -> None:
        """A real image, then zeros up to `total` bytes, chunked (no length to
        refuse it by): a client must count. One chunk is ever held in memory."""
        headers = [(b"content-type", content_type), _CACHE_FILE]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        watch = _Watch(receive, self._closing)
        try:
            await send({"type": "http.response.body", "body": start, "more_body": True})
            left = max(0, total - len(start))
            zeros = bytes(STREAM_CHUNK)
            while left > 0:
                if watch.ended():
                    await watch.finish(send)
                    return
                piece = zeros if left >= STREAM_CHUNK else zeros[:left]
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                left -= len(piece)
                await asyncio.sleep(0)  # let the loop see a disconnect and serve others
            await send({"type": "http.response.body", "body": b""})
        finally:
            watch.cancel()

    async def _send_stream(self, receive: Receive, send: Send, reply: Reply) -> None:
        """A body sent over time: one byte every `Drip.interval` s, or without end."""
        stream = reply.stream
        body = reply.body
        headers = [(b"content-type", reply.content_type), *reply.headers]
        if isinstance(stream, Drip):
            headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        watch = _Watch(receive, self._closing)
        try:
            if isinstance(stream, Drip):
                for index in range(len(body)):
                    last = index == len(body) - 1
                    piece = body[index : index + 1]
                    await send({"type": "http.response.body", "body": piece, "more_body": not last})
                    if not last and await watch.wait(stream.interval):
                        await watch.finish(send)
                        return
                return
            assert isinstance(stream, Endless)
            await send({"type": "http.response.body", "body": body, "more_body": True})
            filler = stream.filler * (STREAM_CHUNK // len(stream.filler))
            while not watch.ended():
                await send({"type": "http.response.body", "body": filler, "more_body": True})
                await asyncio.sleep(0)
            await watch.finish(send)
        finally:
            watch.cancel()

    # --- /_sandbox/ inspection ---------------------------------------------------------

    async def _journal(self, scope: Scope, receive: Receive, parameter: str) -> Reply:
        entries = [entry.as_dict() for entry in self.emulator.journal()]
        return _json(200, {"entries": entries, "credits": self.emulator.credits})

    async def _stats(self, scope: Scope, receive: Receive, parameter: str) -> Reply:
        return _json(200, self.emulator.stats().as_dict())

    async def _webhooks(self, scope: Scope, receive: Receive, parameter: str) -> Reply:
        deliveries = [delivery.as_dict() for delivery in self.emulator.webhooks()]
        return _json(200, {"url": self.emulator.config.webhook_url, "deliveries": deliveries})

    async def _faults(self, scope: Scope, receive: Receive, parameter: str) -> Reply:
        return _json(200, self.emulator.faults())

    async def _set_faults(self, scope: Scope, receive: Receive, parameter: str) -> Reply:
        try:
            changes = json.loads(await _read_body(receive) or b"{}")
        except (ValueError, UnicodeDecodeError):
            return message_reply(400, "Request body must be valid JSON")
        if not isinstance(changes, dict):
            return message_reply(400, "Request body must be a JSON object of settings")
        try:
            return _json(200, self.emulator.set_faults(changes))
        except (ValueError, TypeError) as exc:
            return message_reply(400, str(exc))

    async def _reset_faults(self, scope: Scope, receive: Receive, parameter: str) -> Reply:
        return _json(200, self.emulator.reset_faults())

    async def _expire(self, scope: Scope, receive: Receive, parameter: str) -> Reply:
        self.emulator.expire_downloads()
        return Reply(204)


_NOT_FOUND: Final = message_reply(404, "Not Found")
_METHOD_NOT_ALLOWED: Final = message_reply(405, "Method Not Allowed")


def _json(status: int, document: Any) -> Reply:
    return Reply(status, json.dumps(document, separators=(",", ":")).encode("utf-8"))


async def _send_reply(send: Send, reply: Reply) -> None:
    body = reply.body
    if reply.status in _NO_BODY:
        # No Content-Length allowed (RFC 9110 §8.6); uvicorn sends no body framing.
        headers = list(reply.headers)
    elif body or reply.content_type != JSON_TYPE:
        content_type = (
            _JSON if reply.content_type is JSON_TYPE else (b"content-type", reply.content_type)
        )
        headers = [content_type, (b"content-length", b"%d" % len(body)), *reply.headers]
    else:
        headers = [(b"content-length", b"0"), *reply.headers]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Watch:
    """While a long answer is sent: has the client gone, or is the server stopping?

    After the request body is read, the next `receive` returns only at
    `http.disconnect` (ASGI), so one task waiting on it tells us.
    """

    def __init__(self, receive: Receive, closing: asyncio.Event | None) -> None:
        self._gone = asyncio.ensure_future(_until_disconnect(receive))
        self._closing = closing

    def ended(self) -> bool:
        return self._gone.done() or (self._closing is not None and self._closing.is_set())

    async def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True as soon as the answer should stop."""
        waiters: set[asyncio.Future[Any]] = {self._gone}
        closing = None
        if self._closing is not None:
            closing = asyncio.ensure_future(self._closing.wait())
            waiters.add(closing)
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if closing is not None:
                closing.cancel()
        return self.ended()

    async def finish(self, send: Send) -> None:
        """End an unfinished answer: nothing to do when the client left, else cut it off."""
        if not self._gone.done():
            _abort(send)
            await self._gone

    def cancel(self) -> None:
        self._gone.cancel()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    while message.get("more_body", False):
        message = await receive()
        body += message.get("body", b"")
    return body


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _host(scope: Scope) -> str:
    """Where the client reached us, so download URLs work from wherever it stands."""
    host = _header(scope, b"host")
    if host:
        return host.decode("latin-1")
    server = scope.get("server")
    if server:
        address, port = server[0], server[1]
        return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return "127.0.0.1"


async def _drop(receive: Receive, send: Send) -> None:
    """Close the connection without a single byte of response.

    ASGI has no message for this, so reach the socket through the server:
    uvicorn's `send` is a bound method of its per-request cycle object, which
    holds the connection's asyncio transport (both its httptools and h11
    protocols). `abort()` closes it at once, discarding nothing because
    nothing was written. Then wait for uvicorn to notice (`http.disconnect`,
    delivered by its `connection_lost`): returning earlier would make it think
    the app forgot to answer, log an error and try to write a 500.
    """
    _abort(send)
    await _until_disconnect(receive)


def _abort(send: Send) -> None:
    """Close the connection at once (see `_drop`)."""
    cycle = getattr(send, "__self__", None)
    abort = getattr(getattr(cycle, "transport", None), "abort", None)
    if not callable(abort):
        raise RuntimeError("drop_rate needs uvicorn's httptools or h11 protocol")
    abort()
