"""Small helpers for the sandbox tests (a module name no other test folder uses)."""

from __future__ import annotations

import time
from collections.abc import Callable
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
