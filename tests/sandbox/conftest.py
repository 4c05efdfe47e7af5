"""HTTP clients for the sandbox tests; the servers come from tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from batcher.sandbox import SandboxHandle

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
