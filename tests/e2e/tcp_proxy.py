"""A TCP proxy a test can cut and restore: an API outage on loopback.

    batcher ──▶ 127.0.0.1:port (the proxy) ──▶ the sandbox

`cut()` is the API going away between requests: nothing listens on the port
any more (a new connection is refused at once, as from a host whose service
is down), idle connections are closed, and a connection carrying a request
is closed as soon as its answer has been passed on. So no answer is lost by
the proxy itself: what the outage costs is what batcher makes of it.
`cut(abrupt=True)` is a server restarting or stopping (the PostgreSQL ledger's
tests): every connection is closed at once, mid-answer or not.
`restore()` listens on the same port again.

Threads and blocking sockets: the test's event loop (if any) is untouched.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

QUIET_S = 0.05  # an answer is over when the server has said nothing for this long
TICK_S = 0.02


@dataclass
class _Pair:
    client: socket.socket
    server: socket.socket
    awaiting_answer: bool = False  # the client sent bytes the server has not answered
    close_after_answer: bool = False
    last_answer_at: float = 0.0
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._listener: socket.socket | None = None
        self.port = 0
        self._listen()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(TICK_S)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self, *, abrupt: bool = False) -> None:
        """Stop listening and close the connections: idle ones now, busy ones once
        their answer has passed; `abrupt`: every one now, mid-answer or not (a
        server restarting)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            with pair.lock:
                busy = pair.awaiting_answer and not abrupt
                pair.close_after_answer = True
            if not busy:
                pair.close()

    def restore(self) -> None:
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self._stopped.set()
        self.cut()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.close()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped.is_set() and self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by cut()
            try:
                server = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            pair = _Pair(client, server)
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair: _Pair) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(pair.client, selectors.EVENT_READ, "up")
            selector.register(pair.server, selectors.EVENT_READ, "down")
            try:
                while not pair.closed:
                    for key, _ in selector.select(TICK_S):
                        if not self._move(pair, key.data):
                            return
                    with pair.lock:
                        done = (
                            pair.close_after_answer
                            and not pair.awaiting_answer
                            and time.monotonic() - pair.last_answer_at >= QUIET_S
                        )
                    if done:
                        return
            except OSError:
                return
            finally:
                pair.close()
                with self._lock:
                    if pair in self._pairs:
                        self._pairs.remove(pair)

    def _move(self, pair: _Pair, direction: str) -> bool:
        up = direction == "up"
        source, sink = (pair.client, pair.server) if up else (pair.server, pair.client)
        data = source.recv(65536)
        if not data:
            return False
        sink.sendall(data)
        with pair.lock:
            if direction == "up":
                pair.awaiting_answer = True
            else:
                pair.awaiting_answer = False
                pair.last_answer_at = time.monotonic()
        return True
