"""Small helpers for the sandbox tests (a module name no other test folder uses)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx

from batcher.sandbox import SandboxHandle

T = TypeVar("T")

# The types of the factory fixtures (tests/conftest.py, tests/sandbox/conftest.py).
MakeSandbox = Callable[..., SandboxHandle]
ApiFactory = Callable[..., httpx.Client]

CREATE = "/v1/ai-image-generator"


def body(**overrides: Any) -> dict[str, Any]:
    """A valid create body; keyword arguments replace or (with None) remove fields."""
    document: dict[str, Any] = {
        "image_count": 1,
        "model": "z-image-turbo",
        "resolution": "640px",
        "aspect_ratio": "1:1",
        "style": {"prompt": "A red bicycle on a beach at dawn", "tool": "general"},
        "name": "test item",
    }
    for key, value in overrides.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return document


def wait_until(probe: Callable[[], T | None], timeout: float = 5.0, interval: float = 0.01) -> T:
    """Call `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        time.sleep(interval)


def create(client: httpx.Client, **overrides: Any) -> str:
    """Create a project and return its id, asserting success."""
    response = client.post(CREATE, json=body(**overrides))
    assert response.status_code == 200, response.text
    project_id: str = response.json()["id"]
    return project_id


def wait_status(client: httpx.Client, project_id: str, *statuses: str) -> dict[str, Any]:
    """Poll a project until its status is one of `statuses`; return the document."""

    def probe() -> dict[str, Any] | None:
        document: dict[str, Any] = client.get(f"/v1/image-projects/{project_id}").json()
        return document if document["status"] in statuses else None

    return wait_until(probe)


@dataclass(frozen=True)
class Received:
    """One POST a `Receiver` took."""

    path: str
    headers: dict[str, str]  # names lowercased
    body: bytes
    status: int  # what the receiver answered

    @property
    def document(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class Receiver:
    """A webhook receiver on loopback, in a thread: records every POST.

    It answers each POST with the next status of `statuses`, then 200 for
    ever. `wait_for(n)` blocks until n POSTs have arrived (no sleeping).
    """

    def __init__(self, statuses: Iterable[int] = ()) -> None:
        self._script = list(statuses)
        self._received: list[Received] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                with receiver._changed:
                    status = receiver._script.pop(0) if receiver._script else 200
                    headers = {name.lower(): value for name, value in self.headers.items()}
                    receiver._received.append(Received(self.path, headers, body, status))
                    receiver._changed.notify_all()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/magic-hour"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def received(self) -> list[Received]:
        with self._changed:
            return list(self._received)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """The first `count` POSTs, once they have all arrived."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._received) >= count, timeout):
                raise AssertionError(
                    f"{len(self._received)} webhook(s) arrived, not {count}, in {timeout} s"
                )
            return list(self._received[:count])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
