"""HTTP clients, webhook receivers and manual-clock sandboxes for the sandbox tests;
the shared servers come from tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from sandbox_support import Receiver

from batcher.sandbox import ManualClock, SandboxConfig, SandboxHandle, running_sandbox

ApiFactory = Callable[..., httpx.Client]


@pytest.fixture
def api() -> Iterator[ApiFactory]:
    """`api(handle, key=None)`: an httpx client with the bearer header, closed after the test."""
    clients: list[httpx.Client] = []

    def make(handle: SandboxHandle, key: str | None = None) -> httpx.Client:
        client = httpx.Client(
            base_url=handle.base_url,
            headers={"Authorization": f"Bearer {handle.key if key is None else key}"},
            timeout=10.0,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(sandbox_reset: SandboxHandle, api: ApiFactory) -> httpx.Client:
    """A client of the shared sandbox, whose faults are reset around the test."""
    return api(sandbox_reset)


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """`receiver(statuses=())`: a webhook receiver on loopback, closed after the test."""
    made: list[Receiver] = []

    def make(statuses: Iterable[int] = ()) -> Receiver:
        server = Receiver(statuses)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def manual_sandbox() -> Iterator[Callable[..., tuple[SandboxHandle, ManualClock]]]:
    """`manual_sandbox(**config)`: a sandbox whose clock moves only with `clock.advance()`."""
    with ExitStack() as stack:

        def make(**config: Any) -> tuple[SandboxHandle, ManualClock]:
            clock = ManualClock()
            settings = {"render_seconds": 10.0, "render_jitter": 0.0, **config}
            handle = stack.enter_context(running_sandbox(SandboxConfig(**settings), clock=clock))
            return handle, clock

        yield make
