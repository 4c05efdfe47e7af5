"""MagicHourClient and PooledTransport over real sockets on loopback.

A tiny raw-ASGI app under uvicorn in a thread plays the API; raw socket
servers play the misbehaving ones (an answer that never comes, a connection
closed after the request, a body cut short); a port nobody listens on plays
an unreachable API.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn

from batcher.client.magic_hour import MagicHourClient, PooledTransport, Timeouts
from batcher.errors import (
    ApiError,
    AuthError,
    ConnectError,
    DownloadExpiredError,
    ResponseLostError,
)
from batcher.settings import ApiConfig

pytestmark = pytest.mark.anyio

KEY = "mhk_live_live_test_key_0123456789"
IMAGE = bytes(range(256)) * 4096  # 1 MiB, sent in several chunks
FAST = Timeouts(connect=2.0, write=2.0, pool=2.0, create_read=2.0, read=2.0, download_read=2.0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --------------------------------------------------------------------------- the fake API


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    client_port: int


@dataclass
class FakeApi:
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    created: int = 0
    # path -> (status, body, headers): answer this instead, once
    overrides: dict[str, tuple[int, bytes, list[tuple[bytes, bytes]]]] = field(default_factory=dict)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        self.seen.append(Seen(scope["method"], path, headers, scope["client"][1]))

        async def answer(
            status: int, body: bytes = b"", extra: list[tuple[bytes, bytes]] | None = None
        ) -> None:
            head = [(b"content-length", str(len(body)).encode()), *(extra or [])]
            await send({"type": "http.response.start", "status": status, "headers": head})
            await send({"type": "http.response.body", "body": body})

        def as_json(data: Any) -> bytes:
            return json.dumps(data).encode()

        api = path.startswith("/v1/")
        if path in self.overrides:
            await answer(*self.overrides.pop(path))
        elif api and headers.get("authorization") != f"Bearer {KEY}":
            await answer(401, as_json({"message": "invalid API key"}))
        elif scope["method"] == "DELETE":
            await answer(204)
        elif path == "/v1/ai-image-generator":
            self.created += 1
            await answer(200, as_json({"id": f"p{self.created}", "credits_charged": 5}))
        elif path.startswith("/v1/image-projects/"):
            pid = path.rsplit("/", 1)[1]
            url = f"http://localhost:{self.port}/files/ok.png?sig=s3cr3t"
            data = {
                "id": pid,
                "status": "complete",
                "credits_charged": 5,
                "downloads": [{"url": url}],
            }
            await answer(200, as_json(data))
        elif path == "/v1/account":
            await answer(200, as_json({"id": "a", "credits": 42, "tier": "free"}))
        elif path == "/files/ok.png":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(len(IMAGE)).encode())],
                }
            )
            step = len(IMAGE) // 4
            for start in range(0, len(IMAGE), step):
                chunk = IMAGE[start : start + step]
                last = start + step >= len(IMAGE)
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
        elif path == "/files/expired.png":
            await answer(403, b"<Error><Code>AccessDenied</Code>Request has expired</Error>")
        elif path == "/files/redirect":
            await answer(
                302, extra=[(b"location", f"http://localhost:{self.port}/files/ok.png".encode())]
            )
        else:
            await answer(404, as_json({"message": "no route"}))


@pytest.fixture(scope="module")
def fake_api() -> Iterator[FakeApi]:
    app = FakeApi()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app.port = sock.getsockname()[1]
    # loop="auto" is uvloop where installed: under a plain asyncio loop this
    # server answers each keep-alive request ~40 ms late (Nagle meets delayed ACK).
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = 200
    while not server.started and deadline:
        threading.Event().wait(0.025)
        deadline -= 1
    assert server.started, "uvicorn did not start"
    try:
        yield app
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def api(fake_api: FakeApi) -> FakeApi:
    fake_api.seen.clear()
    fake_api.overrides.clear()
    return fake_api


def client_of(port: int, **kwargs: Any) -> MagicHourClient:
    kwargs.setdefault("timeouts", FAST)
    return MagicHourClient(ApiConfig(base_url=f"http://127.0.0.1:{port}", api_key=KEY), **kwargs)


# --------------------------------------------------------------------------- misbehaving servers


class RawServer:
    """Accepts connections, reads one request, then misbehaves as told."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.02)
        self.port: int = self.sock.getsockname()[1]
        self.requests = 0
        self._stop = threading.Event()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._open:
            conn.close()
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(2)
            self._open.append(conn)
            with contextlib.suppress(OSError):
                self._serve(conn)

    def _read_request(self, conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += conn.recv(65536)
        self.requests += 1
        return True

    def _serve(self, conn: socket.socket) -> None:
        while self._read_request(conn):
            if self.behaviour == "close":
                conn.close()  # request read, no answer: the client cannot know what happened
                return
            if self.behaviour == "hang":
                return  # keep the socket open, never answer
            if self.behaviour == "truncated":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
                conn.close()
                return
            if self.behaviour == "one-per-connection":
                # Answers as if keep-alive, then closes the idle connection, as a
                # server whose idle timeout is shorter than ours would.
                body = b'{"id":"p","credits_charged":1,"status":"queued"}'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                conn.close()
                return


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed: connecting is refused


# --------------------------------------------------------------------------- tests


async def test_calls_over_a_real_server_reuse_one_connection(api: FakeApi) -> None:
    async with client_of(api.port) as client:
        created = await client.create_image({"image_count": 1, "style": {"prompt": "x"}})
        status = await client.get_project(created.project_id)
        account = await client.get_account()
        await client.delete_project(created.project_id)
    assert created.credits_charged == 5
    assert status.is_finished and len(status.downloads) == 1
    assert account.credits == 42
    assert len({seen.client_port for seen in api.seen}) == 1  # keep-alive reuse
    assert all(seen.headers["authorization"] == f"Bearer {KEY}" for seen in api.seen)


async def test_concurrent_calls_stay_within_the_pool(api: FakeApi) -> None:
    transport = PooledTransport(3)
    async with client_of(api.port, transport=transport) as client:
        results: list[str] = []

        async def one() -> None:
            results.append((await client.create_image({"image_count": 1})).project_id)

        async with anyio.create_task_group() as tg:
            for _ in range(60):
                tg.start_soon(one)
        assert transport.in_use == 0
        assert 1 <= transport.idle <= 3
    assert len(set(results)) == 60
    assert len({seen.client_port for seen in api.seen}) <= 3


async def test_download_streams_to_disk_without_the_key(api: FakeApi, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "img.png"
    async with client_of(api.port) as client:
        status = await client.get_project("p1")
        written = await client.download(status.downloads[0].url, dest)  # on "localhost"
        same_host = f"http://127.0.0.1:{api.port}/files/ok.png?sig=1"
        await client.download(same_host, tmp_path / "same.png")
        await client.download(f"http://127.0.0.1:{api.port}/files/redirect", tmp_path / "r.png")
    assert written == len(IMAGE)
    assert dest.read_bytes() == IMAGE
    assert (tmp_path / "r.png").read_bytes() == IMAGE
    files = [seen for seen in api.seen if seen.path.startswith("/files/")]
    assert len(files) == 4
    assert all("authorization" not in seen.headers for seen in files)
    assert names(tmp_path) == ["out", "r.png", "same.png"]


async def test_live_error_answers(api: FakeApi, tmp_path: Path) -> None:
    api.overrides["/v1/ai-image-generator"] = (429, b"Too Many", [(b"retry-after", b"3")])
    async with client_of(api.port) as client:
        with pytest.raises(ApiError) as busy:
            await client.create_image({"image_count": 1})
        with pytest.raises(DownloadExpiredError) as expired:
            await client.download(f"http://localhost:{api.port}/files/expired.png", tmp_path / "e")
    assert (busy.value.status, busy.value.retry_after, busy.value.message) == (429, 3.0, "Too Many")
    assert expired.value.status == 403
    assert "expired" in expired.value.message
    assert names(tmp_path) == []

    config = ApiConfig(base_url=f"http://127.0.0.1:{api.port}", api_key="not-the-key")
    async with MagicHourClient(config) as bad:
        with pytest.raises(AuthError) as auth:
            await bad.get_account()
    assert auth.value.status == 401
    assert "invalid API key" in auth.value.message


async def test_refused_connection_is_connect_error() -> None:
    async with client_of(unused_port()) as client:
        with pytest.raises(ConnectError, match="nothing was sent"):
            await client.create_image({"image_count": 1})
        with pytest.raises(ConnectError):
            await client.get_project("p")


async def test_connection_closed_after_the_request_is_in_doubt() -> None:
    with RawServer("close") as server:
        async with client_of(server.port) as client:
            with pytest.raises(ResponseLostError, match="may have been processed"):
                await client.create_image({"image_count": 1})
    assert server.requests == 1  # it did arrive: a re-send could pay twice


async def test_no_answer_in_time_is_in_doubt() -> None:
    quick = Timeouts(connect=1.0, write=1.0, pool=1.0, create_read=0.1, read=0.1)
    with RawServer("hang") as server:
        async with client_of(server.port, timeouts=quick) as client:
            with pytest.raises(ResponseLostError, match="ReadTimeout"):
                await client.create_image({"image_count": 1})


async def test_body_cut_short_leaves_no_file(tmp_path: Path) -> None:
    dest = tmp_path / "img.png"
    with RawServer("truncated") as server:
        async with client_of(server.port) as client:
            with pytest.raises(ResponseLostError):
                await client.download(f"http://127.0.0.1:{server.port}/img.png", dest)
    assert names(tmp_path) == []


async def test_waiting_for_a_free_connection_times_out_as_never_sent() -> None:
    quick = Timeouts(connect=1.0, write=1.0, pool=0.05, create_read=5.0, read=5.0)
    with RawServer("hang") as server:
        client = client_of(server.port, timeouts=quick, transport=PooledTransport(1))
        async with client, anyio.create_task_group() as tg:
            tg.start_soon(client.create_image, {"image_count": 1})  # holds the only connection
            for _ in range(400):
                if server.requests:
                    break
                await anyio.sleep(0.005)
            with pytest.raises(ConnectError, match="PoolTimeout"):
                await client.get_project("p")
            tg.cancel_scope.cancel()
    assert server.requests == 1


async def test_connection_closed_by_the_server_while_idle_is_replaced() -> None:
    with RawServer("one-per-connection") as server:
        transport = PooledTransport(2)
        async with client_of(server.port, transport=transport) as client:
            for _ in range(3):
                await client.get_project("p")
                # Let the server's close reach us (up to 5 s on a loaded machine).
                for _ in range(1000):
                    await anyio.sleep(0.005)
                    if server.requests and transport.idle and _idle_is_readable(transport):
                        break
            assert transport.idle <= 1
    assert server.requests == 3


def _idle_is_readable(transport: PooledTransport) -> bool:
    return all(
        connection.has_expired() for stack in transport._idle.values() for _, connection in stack
    )


async def test_keepalive_expiry_retires_idle_connections(api: FakeApi) -> None:
    transport = PooledTransport(2, keepalive_expiry=0.0)
    async with client_of(api.port, transport=transport) as client:
        for _ in range(3):
            await client.get_account()
    assert len({seen.client_port for seen in api.seen}) == 3


async def test_closed_client_frees_everything(api: FakeApi) -> None:
    transport = PooledTransport(2)
    client = client_of(api.port, transport=transport)
    await client.get_account()
    assert transport.idle == 1
    await client.aclose()
    assert transport.idle == 0
    with pytest.raises(RuntimeError):
        await client.get_account()
