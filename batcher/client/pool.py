"""The connection pool under the Magic Hour client: HTTP/1.1, O(1) per request.

Why not httpcore's own pool (or a plain `httpx.AsyncClient()`): measured on the
2-core dev machine with 64 workers (bench/pool_experiments.py), httpcore's pool
rescans every connection, and asks every idle socket whether it is readable,
on each request and each response close, so it gets slower as connections are
added (encode/httpx#3215). See batcher.client.magic_hour for the figures.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final

import anyio
import anyio.abc
import httpcore
import httpx

# Idle keep-alive connections are dropped after this long. Below the 5 s idle
# timeout common on servers (uvicorn, many load balancers), so that we close
# first instead of racing a server's close: a create written onto a connection
# the server is closing can end "Server disconnected", which is in doubt.
DEFAULT_KEEPALIVE_EXPIRY: Final = 4.0

# --------------------------------------------------------------------------- pool

# httpcore's exceptions → httpx's, most specific first (the same mapping httpx's
# own transport applies, which is private to httpx).
_HTTPCORE_TO_HTTPX: Final[dict[type[Exception], type[httpx.TransportError]]] = {
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProxyError: httpx.ProxyError,
}


def _as_httpx(exc: Exception, request: httpx.Request | None) -> Exception:
    """The httpx exception for an httpcore one; anything else unchanged."""
    for klass in type(exc).__mro__:
        target = _HTTPCORE_TO_HTTPX.get(klass)
        if target is not None:
            return target(str(exc), request=request)
    return exc


_OriginKey = tuple[bytes, bytes, int | None]


class _PooledStream(httpx.AsyncByteStream):
    """A response body that gives its connection back to the pool when closed."""

    __slots__ = ("_closed", "_connection", "_key", "_pool", "_request", "_stream")

    def __init__(
        self,
        pool: PooledTransport,
        key: _OriginKey,
        connection: httpcore.AsyncHTTPConnection,
        stream: Any,
        request: httpx.Request,
    ) -> None:
        self._pool = pool
        self._key = key
        self._connection = connection
        self._stream = stream
        self._request = request
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except Exception as exc:
            mapped = _as_httpx(exc, self._request)
            if mapped is exc:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._stream.aclose()
        except Exception as exc:
            mapped = _as_httpx(exc, self._request)
            if mapped is exc:
                raise
            raise mapped from exc
        finally:
            await self._pool._checkin(self._key, self._connection)


class PooledTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 connection pool with O(1) bookkeeping per request.

    At most `max_connections` connections are in use at once (a request waits
    up to the `pool` timeout for one, then fails with httpx.PoolTimeout, before
    anything is written). Idle connections wait in a LIFO stack per origin: the
    most recently used is reused first (warm, least likely to have been closed
    by the server), and only that one is checked for expiry and for a
    server-side close. Connections idle longer than `keepalive_expiry` are
    closed from the bottom of the stack as new ones are returned.
    """

    def __init__(
        self,
        max_connections: int,
        *,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        # One SSL context for every connection: building one loads the CA bundle.
        self._ssl_context = httpx.create_ssl_context(verify=verify)
        # anyio's backend works under asyncio and trio; one instance for all
        # connections spares each its own async-library detection.
        self._backend = _Backend()
        self._slots = anyio.Semaphore(max_connections, fast_acquire=True)
        self._idle: dict[_OriginKey, deque[tuple[float, httpcore.AsyncHTTPConnection]]] = {}
        self._idle_count = 0
        self._in_use = 0
        self._closed = False

    @property
    def max_connections(self) -> int:
        return self._max_connections

    @property
    def in_use(self) -> int:
        """Connections carrying a request now."""
        return self._in_use

    @property
    def idle(self) -> int:
        """Open connections waiting for a request."""
        return self._idle_count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the connection pool is closed")
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(
                f"unsupported URL scheme {url.scheme!r}", request=request
            )
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,  # an AsyncByteStream: async-iterable bytes
            extensions=request.extensions,
        )
        key: _OriginKey = (scheme, url.raw_host, url.port)
        await self._acquire_slot(request)
        connection: httpcore.AsyncHTTPConnection | None = None
        try:
            while True:
                connection = await self._checkout(key)
                if connection is None:
                    connection = httpcore.AsyncHTTPConnection(
                        core_request.url.origin,
                        ssl_context=self._ssl_context,
                        keepalive_expiry=self._keepalive_expiry,
                        http1=True,
                        http2=False,
                        network_backend=self._backend,
                    )
                try:
                    response = await _established(connection).handle_async_request(core_request)
                except httpcore.ConnectionNotAvailable:
                    # The connection closed between our check and its use, before
                    # anything was written: take another.
                    await _close_quietly(connection)
                    connection = None
                    continue
                break
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                if connection is not None:
                    await self._checkin(key, connection)
                else:
                    self._release_slot()
            if isinstance(exc, Exception):
                mapped = _as_httpx(exc, request)
                if mapped is not exc:
                    raise mapped from exc
            raise
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_PooledStream(self, key, connection, response.stream, request),
            extensions=response.extensions,
        )

    async def _acquire_slot(self, request: httpx.Request) -> None:
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            timeouts = request.extensions.get("timeout", {})
            with anyio.move_on_after(timeouts.get("pool")) as scope:
                await self._slots.acquire()
            if scope.cancelled_caught:
                raise httpx.PoolTimeout(
                    f"no connection free within the pool timeout ({self._max_connections} in use)",
                    request=request,
                ) from None
        self._in_use += 1

    def _release_slot(self) -> None:
        self._in_use -= 1
        self._slots.release()

    async def _checkout(self, key: _OriginKey) -> httpcore.AsyncHTTPConnection | None:
        stack = self._idle.get(key)
        while stack:
            _, connection = stack.pop()
            self._idle_count -= 1
            # has_expired(): keep-alive time out, or the server closed it (the
            # socket is readable while idle). One cheap syscall, this connection only.
            if connection.is_closed() or connection.has_expired():
                await _close_quietly(connection)
                continue
            return connection
        return None

    async def _checkin(self, key: _OriginKey, connection: httpcore.AsyncHTTPConnection) -> None:
        """Take a connection back after its request: keep it idle or close it; free the slot."""
        try:
            now = time.monotonic()
            reusable = (
                not self._closed
                and not connection.is_closed()
                and connection.is_idle()
                and self._idle_count < self._max_connections
            )
            if not reusable:
                await _close_quietly(connection)
                return
            stack = self._idle.get(key)
            if stack is None:
                stack = self._idle[key] = deque()
            stack.append((now, connection))
            self._idle_count += 1
            # Sweep the bottom of the stack: connections nobody reused in time.
            while stack and stack[0][0] + self._keepalive_expiry < now:
                _, stale = stack.popleft()
                self._idle_count -= 1
                await _close_quietly(stale)
        finally:
            self._release_slot()

    async def aclose(self) -> None:
        self._closed = True
        stacks = list(self._idle.values())
        self._idle.clear()
        self._idle_count = 0
        for stack in stacks:
            for _, connection in stack:
                await _close_quietly(connection)


class _Stream(httpcore.AsyncNetworkStream):
    """httpcore's anyio stream (`base`), with its read and write done without
    its two generator context managers and exception table per call: a create
    makes three of them. The same timeouts, the same httpcore errors (read
    timeouts as ReadTimeout, a broken or closed stream as ReadError...); all
    else (TLS, socket details, closing) is the base stream's."""

    __slots__ = ("_base", "_socket", "_stream")

    def __init__(self, base: httpcore.AsyncNetworkStream, stream: anyio.abc.ByteStream) -> None:
        self._base = base
        self._stream = stream
        self._socket: socket.socket | None = None

    async def read(
        self,
        max_bytes: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's stream interface
    ) -> bytes:
        try:
            with anyio.move_on_after(timeout) as scope:
                try:
                    return await self._stream.receive(max_bytes)
                except anyio.EndOfStream:
                    return b""
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream) as exc:
            raise httpcore.ReadError(exc) from exc
        # Only its deadline cancels this scope (as anyio.fail_after tells it).
        if scope.cancelled_caught and anyio.current_time() >= scope.deadline:
            timeout_error = TimeoutError()
            raise httpcore.ReadTimeout(timeout_error) from timeout_error
        raise AssertionError("unreachable")  # pragma: no cover: the scope returned or raised

    async def write(
        self,
        buffer: bytes,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's stream interface
    ) -> None:
        if not buffer:
            return
        try:
            with anyio.move_on_after(timeout) as scope:
                await self._stream.send(buffer)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise httpcore.WriteError(exc) from exc
        if scope.cancelled_caught and anyio.current_time() >= scope.deadline:
            timeout_error = TimeoutError()
            raise httpcore.WriteTimeout(timeout_error) from timeout_error

    async def aclose(self) -> None:
        await self._base.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's stream interface
    ) -> httpcore.AsyncNetworkStream:
        return _faster(await self._base.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # Asked of each idle connection the pool hands out (has the server
            # closed it?). The socket is looked up once, not on every request:
            # anyio builds a table of all its attributes for each lookup.
            if self._socket is None:
                self._socket = self._base.get_extra_info("socket")
            return _readable(self._socket)
        return self._base.get_extra_info(info)


def _readable(sock: socket.socket | None) -> bool:
    """Whether recv() would return at once (data, or the end of a closed
    connection), without reading: httpcore's own test (httpcore._utils)."""
    fd = None if sock is None else sock.fileno()
    if fd is None or fd < 0:
        return True  # no socket any more: as good as closed
    if sys.platform == "win32" or getattr(select, "poll", None) is None:
        ready, _, _ = select.select([fd], [], [], 0)
        return bool(ready)
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))


def _faster(stream: httpcore.AsyncNetworkStream) -> httpcore.AsyncNetworkStream:
    """`stream` as a _Stream, when it is httpcore's anyio stream as we know it."""
    inner = getattr(stream, "_stream", None)
    return _Stream(stream, inner) if isinstance(inner, anyio.abc.ByteStream) else stream


class _Backend(httpcore.AnyIOBackend):
    """httpcore's anyio backend (connecting, its errors), whose streams are _Streams."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _faster(
            await super().connect_tcp(host, port, timeout, local_address, socket_options)
        )


def _established(
    connection: httpcore.AsyncHTTPConnection,
) -> httpcore.AsyncHTTPConnection | httpcore.AsyncHTTP11Connection:
    """Where a request on `connection` goes: once connected, straight to its
    HTTP/1.1 connection. The wrapper would only take its connect lock again
    (one more trip through the event loop per request) and hand the request on;
    the pool already gives a connection to one request at a time. Before the
    first request (or with an httpcore whose insides differ), the wrapper: it
    connects."""
    inner = getattr(connection, "_connection", None)
    return inner if type(inner) is httpcore.AsyncHTTP11Connection else connection


async def _close_quietly(connection: httpcore.AsyncHTTPConnection) -> None:
    # Closing a socket cannot tell us anything useful; never let it mask the
    # real outcome, and finish it even when the caller is being cancelled.
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await connection.aclose()
