"""Fault injection over real HTTP: latency, 429s (and their counts by kind), 5xx,
dropped connections, seeds."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import socket
import time
from collections.abc import Callable

import httpx
import pytest
from sandbox_support import CREATE, ApiFactory, MakeSandbox, body, create, wait_until

from batcher.sandbox import ManualClock, SandboxHandle

ManualSandbox = Callable[..., tuple[SandboxHandle, ManualClock]]


def test_latency_delays_every_api_request(sandbox_reset: SandboxHandle, api: ApiFactory) -> None:
    client = api(sandbox_reset)
    client.get("/v1/account")  # connect first: time only the request
    sandbox_reset.set_faults(latency=0.2)
    started = time.perf_counter()
    assert client.get("/v1/account").status_code == 200
    assert time.perf_counter() - started >= 0.2
    started = time.perf_counter()
    httpx.get(sandbox_reset.base_url + "/_sandbox/stats", timeout=10)  # not an API request
    assert time.perf_counter() - started < 0.2


def test_latency_is_an_async_sleep_not_a_busy_server(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    handle = make_sandbox(latency=0.3)
    clients = [api(handle) for _ in range(8)]
    for client in clients:  # connect each first: time only the requests
        client.get("/_sandbox/stats")
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda c: c.get("/v1/account").status_code, clients))
    assert statuses == [200] * 8
    assert time.perf_counter() - started < 0.3 * 4  # concurrent, not one after another


def test_rate_limit_answers_429_without_retry_after_by_default(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    handle = make_sandbox(rate_limit=5)
    client = api(handle)
    statuses = [client.get("/v1/account").status_code for _ in range(8)]
    assert statuses[:5] == [200] * 5
    assert 429 in statuses[5:]
    refused = client.post(CREATE, json=body())
    assert refused.status_code == 429
    assert refused.json() == {"message": "Too many requests"}
    assert "retry-after" not in refused.headers
    assert handle.journal() == []  # a refused create charges nothing
    assert handle.account_credits == 1_000_000


def test_rate_limit_covers_every_api_request_even_unauthorised(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    handle = make_sandbox(rate_limit=2)
    bad = api(handle, key="wrong")
    assert [bad.get("/v1/account").status_code for _ in range(3)] == [401, 401, 429]
    # Inspection and files are not API requests.
    assert httpx.get(handle.base_url + "/_sandbox/stats", timeout=10).status_code == 200


def test_rate_limit_retry_after_honest(make_sandbox: MakeSandbox, api: ApiFactory) -> None:
    handle = make_sandbox(rate_limit=0.25, retry_after="honest")
    client = api(handle)
    assert client.get("/v1/account").status_code == 200
    refused = client.get("/v1/account")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] in {"4", "3"}  # a token every 4 s
    handle.set_faults(rate_limit=50.0)

    def refusal() -> httpx.Response | None:
        response = client.get("/v1/account")
        return response if response.status_code == 429 else None

    assert wait_until(refusal, interval=0).headers["retry-after"] == "1"  # 20 ms: the minimum


def test_rate_limit_retry_after_fixed_value(make_sandbox: MakeSandbox, api: ApiFactory) -> None:
    handle = make_sandbox(rate_limit=1, retry_after=7)
    client = api(handle)
    client.get("/v1/account")
    refused = client.get("/v1/account")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "7"


def test_max_in_flight_refuses_before_charging(make_sandbox: MakeSandbox, api: ApiFactory) -> None:
    handle = make_sandbox(max_in_flight=2, render_seconds=3.0, render_jitter=0.0)
    client = api(handle)
    create(client)
    create(client)
    refused = client.post(CREATE, json=body())
    assert refused.status_code == 429
    assert "retry-after" not in refused.headers
    assert len(handle.journal()) == 2
    assert handle.account_credits == 1_000_000 - 10
    assert handle.stats().in_flight == 2
    handle.set_faults(retry_after="honest")
    honest = client.post(CREATE, json=body())
    assert honest.status_code == 429
    assert 1 <= int(honest.headers["retry-after"]) <= 3  # the first render ends within 3 s


def test_max_in_flight_frees_slots_when_renders_finish(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    handle = make_sandbox(max_in_flight=1, render_seconds=0.1)
    client = api(handle)
    create(client)
    assert client.post(CREATE, json=body()).status_code == 429
    wait_until(lambda: client.post(CREATE, json=body()).status_code == 200)


@pytest.mark.parametrize("method", ["create", "poll"])
def test_server_errors_create_nothing(
    make_sandbox: MakeSandbox, api: ApiFactory, method: str
) -> None:
    handle = make_sandbox(seed=3)
    client = api(handle)
    project_id = create(client)
    handle.set_faults(**{"error_rate" if method == "create" else "poll_error_rate": 1.0})
    statuses = set()
    for _ in range(30):
        if method == "create":
            response = client.post(CREATE, json=body())
        else:
            response = client.get(f"/v1/image-projects/{project_id}")
        statuses.add(response.status_code)
        assert response.json()["message"]
    assert statuses == {500, 502, 503}
    assert len(handle.journal()) == 1
    assert handle.account_credits == 1_000_000 - 5


def test_polls_stay_clean_under_create_errors(make_sandbox: MakeSandbox, api: ApiFactory) -> None:
    handle = make_sandbox()
    client = api(handle)
    project_id = create(client)
    handle.set_faults(error_rate=1.0)
    for _ in range(20):
        assert client.get(f"/v1/image-projects/{project_id}").status_code == 200


def test_error_rate_is_a_share(make_sandbox: MakeSandbox, api: ApiFactory) -> None:
    handle = make_sandbox(error_rate=0.5, seed=11)
    client = api(handle)
    ok = sum(client.post(CREATE, json=body()).status_code == 200 for _ in range(200))
    assert 60 < ok < 140
    assert len(handle.journal()) == ok


def _raw_create(handle: SandboxHandle, *, close: bool = False) -> bytes:
    """Send one create over a raw socket; everything the server sent back until it closed.

    Without `close` the request asks for keep-alive: only the server can end it.
    """
    host, port = handle.base_url.removeprefix("http://").rsplit(":", 1)
    payload = json.dumps(body()).encode()
    request = (
        f"POST /v1/ai-image-generator HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {handle.key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    ).encode() + payload
    received = b""
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def test_a_dropped_create_closes_the_connection_with_no_byte(
    make_sandbox: MakeSandbox, api: ApiFactory, caplog: pytest.LogCaptureFixture
) -> None:
    handle = make_sandbox(drop_rate=1.0)
    with caplog.at_level(logging.DEBUG):
        assert _raw_create(handle) == b""
        with pytest.raises(httpx.RemoteProtocolError):
            api(handle).post(CREATE, json=body())
        handle.set_faults(drop_rate=0.0)
        after = _raw_create(handle, close=True)  # the server is fine and answers the next one
    assert after.startswith(b"HTTP/1.1 200 ")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    journal = handle.journal()
    assert [entry.dropped for entry in journal] == [True, True, False]
    assert all(entry.credits_charged == 5 for entry in journal)
    assert handle.account_credits == 1_000_000 - 15
    stats = handle.stats()
    assert stats.dropped == 2
    assert stats.requests["POST /v1/ai-image-generator"] == {"dropped": 2, "200": 1}
    # The dropped projects exist and render like any other.
    client = api(handle)
    for entry in journal:
        assert client.get(f"/v1/image-projects/{entry.id}").status_code == 200


def test_the_same_seed_reproduces_faults_over_http(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    def run(seed: int) -> list[int | str]:
        handle = make_sandbox(seed=seed, error_rate=0.3, render_error_rate=0.5)
        client = api(handle)
        outcomes: list[int | str] = []
        for _ in range(30):
            outcomes.append(client.post(CREATE, json=body()).status_code)
        wait_until(lambda: handle.stats().in_flight == 0)
        outcomes.extend(entry.status for entry in handle.journal())
        return outcomes

    first = run(5)
    assert first == run(5)
    assert first != run(6)


def test_429s_are_counted_by_kind(manual_sandbox: ManualSandbox, api: ApiFactory) -> None:
    # A manual clock: the rate bucket refills and renders end only when told.
    handle, clock = manual_sandbox(rate_limit=3.0, max_in_flight=1)
    client = api(handle)
    statuses = [client.post(CREATE, json=body()).status_code for _ in range(3)]
    assert statuses == [200, 429, 429]  # three tokens; one render slot
    assert client.get("/v1/account").status_code == 429  # no token left
    assert client.post(CREATE, json=body()).status_code == 429
    stats = handle.stats()
    assert (stats.render_cap_429s, stats.rate_limit_429s) == (2, 2)
    assert stats.count("POST /v1/ai-image-generator", 429) == 3  # both kinds, one route
    clock.advance(10.0)  # the render ends; the bucket refills
    assert client.post(CREATE, json=body()).status_code == 200
    document = httpx.get(handle.base_url + "/_sandbox/stats", timeout=10).json()
    assert (document["render_cap_429s"], document["rate_limit_429s"]) == (2, 2)


def test_rate_limit_429s_are_not_render_cap_429s(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    handle = make_sandbox(rate_limit=2.0)
    client = api(handle)
    refused = sum(client.get("/v1/account").status_code == 429 for _ in range(6))
    assert refused >= 3
    stats = handle.stats()
    assert stats.rate_limit_429s == refused
    assert stats.render_cap_429s == 0
