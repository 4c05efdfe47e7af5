"""The hostile behaviours of issue 10 as fault flags, over real HTTP.

Each one is paid for: the journal shows the real charge beside the fault,
so a client's ledger can be held against it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sandbox_support import (
    CREATE,
    ApiFactory,
    MakeSandbox,
    body,
    create,
    wait_status,
    wait_until,
)

from batcher.sandbox import CREATE_GARBLES, ManualClock, SandboxConfig, SandboxHandle

ManualSandbox = Callable[..., tuple[SandboxHandle, ManualClock]]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def project_path(project_id: str) -> str:
    return f"/v1/image-projects/{project_id}"


# --------------------------------------------------------------------------- polls


def test_poll_404_answers_404_for_a_known_project(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    handle = make_sandbox()
    client = api(handle)
    project_id = create(client)
    handle.set_faults(poll_404_rate=1.0)
    for _ in range(3):
        response = client.get(project_path(project_id))
        assert response.status_code == 404
        assert response.json() == {"message": "Not Found"}
    handle.set_faults(poll_404_rate=0.0)
    assert client.get(project_path(project_id)).status_code == 200  # it was there all along
    (entry,) = handle.journal()
    assert entry.credits_charged == 5  # paid for, and no refund comes of a 404
    assert entry.credits_refunded == 0
    stats = handle.stats()
    assert stats.poll_404s == 3
    assert stats.count("GET /v1/image-projects/{id}", 404) == 3


def test_poll_404_is_a_share(make_sandbox: MakeSandbox, api: ApiFactory) -> None:
    handle = make_sandbox(poll_404_rate=0.5, seed=9)
    client = api(handle)
    project_id = create(client)
    statuses = [client.get(project_path(project_id)).status_code for _ in range(100)]
    assert 25 < statuses.count(404) < 75
    assert set(statuses) == {200, 404}


def test_a_surcharge_shows_on_a_later_get_and_is_charged(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    handle = make_sandbox(surcharge_rate=1.0, render_seconds=0.3, credits=1000)
    client = api(handle)
    answer = client.post(CREATE, json=body()).json()
    assert answer["credits_charged"] == 5
    early = client.get(project_path(answer["id"])).json()
    assert early["status"] in {"queued", "rendering"}
    assert early["credits_charged"] == 5
    done = wait_status(client, answer["id"], "complete")
    assert done["credits_charged"] == done["total_frame_cost"] == 50
    assert client.get("/v1/account").json()["credits"] == 950
    (entry,) = handle.journal()
    assert (entry.credits_charged, entry.credits_surcharged, entry.credits_net) == (5, 45, 50)
    stats = handle.stats()
    assert (stats.credits_charged, stats.credits_surcharged) == (50, 45)


def test_a_failed_render_is_refunded_not_surcharged(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    handle = make_sandbox(surcharge_rate=1.0, render_error_rate=1.0, credits=100)
    client = api(handle)
    project_id = create(client)
    assert wait_status(client, project_id, "error")["credits_charged"] == 0
    assert handle.account_credits == 100


# --------------------------------------------------------------------------- renders


def test_a_stuck_render_stays_rendering_for_ever(
    manual_sandbox: ManualSandbox, api: ApiFactory
) -> None:
    handle, clock = manual_sandbox(stuck_rate=1.0, max_in_flight=1, retry_after="honest")
    client = api(handle)
    project_id = create(client)
    clock.advance(3.0)
    assert client.get(project_path(project_id)).json()["status"] == "rendering"
    clock.advance(30 * 86_400.0)
    document = client.get(project_path(project_id)).json()
    assert document["status"] == "rendering"
    assert document["downloads"] == []
    assert handle.stats().in_flight == 1  # it holds its render slot
    refused = client.post(CREATE, json=body())
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "3600"  # honest would be "never": capped
    (entry,) = handle.journal()
    assert (entry.outcome, entry.status, entry.credits_charged) == ("stuck", "rendering", 5)


def test_a_canceled_render_is_not_refunded(make_sandbox: MakeSandbox, api: ApiFactory) -> None:
    handle = make_sandbox(cancel_rate=1.0, credits=100)
    client = api(handle)
    project_id = create(client, model="krea-2")
    document = wait_status(client, project_id, "canceled")
    assert document["credits_charged"] == 10
    assert document["downloads"] == []
    assert document["error"]["code"] == "canceled"
    assert client.get("/v1/account").json()["credits"] == 90
    (entry,) = handle.journal()
    assert (entry.status, entry.credits_refunded, entry.outcome) == ("canceled", 0, "canceled")


# --------------------------------------------------------------------------- downloads


def complete(client: httpx.Client, **overrides: Any) -> dict[str, Any]:
    return wait_status(client, create(client, **overrides), "complete")


@pytest.mark.parametrize(("image_count", "listed"), [(1, 0), (3, 2)])
def test_bad_downloads_short_lists_fewer_urls(
    make_sandbox: MakeSandbox, api: ApiFactory, image_count: int, listed: int
) -> None:
    handle = make_sandbox(bad_downloads="short")
    document = complete(api(handle), image_count=image_count, model="flux-schnell")
    assert document["image_count"] == image_count
    assert len(document["downloads"]) == listed


def test_bad_downloads_empty_completes_with_no_urls(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    handle = make_sandbox(bad_downloads="empty")
    document = complete(api(handle), image_count=2, model="flux-schnell")
    assert document["status"] == "complete"
    assert document["downloads"] == []
    assert handle.stats().bad_download_gets >= 1


def test_bad_downloads_html_serves_a_page_with_200(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    handle = make_sandbox(bad_downloads="html")
    (item,) = complete(api(handle))["downloads"]
    assert item["url"].split("?")[0].endswith(".png")
    response = httpx.get(item["url"], timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.content.startswith(b"<!DOCTYPE html>")


def test_bad_downloads_empty_body_serves_nothing_with_200(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    handle = make_sandbox(bad_downloads="empty-body")
    (item,) = complete(api(handle))["downloads"]
    response = httpx.get(item["url"], timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-length"] == "0"
    assert response.content == b""


def test_bad_downloads_huge_is_streamed_and_never_held(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    size = 64 * 1024 * 1024
    handle = make_sandbox(bad_downloads="huge", huge_download_bytes=size)
    (item,) = complete(api(handle))["downloads"]
    tracemalloc.start()  # the server runs in this process: its allocations count too
    try:
        total = 0
        with httpx.stream("GET", item["url"], timeout=30) as response:
            assert response.status_code == 200
            assert "content-length" not in response.headers  # nothing to refuse it by
            for index, chunk in enumerate(response.iter_raw()):
                if index == 0:
                    assert chunk.startswith(PNG_SIGNATURE)  # it looks like an image
                total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert peak < 16 * 1024 * 1024  # a quarter of the body: it was never materialised


def test_a_client_leaving_a_huge_download_stops_it(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    handle = make_sandbox(bad_downloads="huge", huge_download_bytes=10**13)  # 10 TB
    client = api(handle)
    (item,) = complete(client)["downloads"]
    with httpx.stream("GET", item["url"], timeout=30) as response:
        seen = 0
        for chunk in response.iter_raw():
            seen += len(chunk)
            if seen > 4 * 1024 * 1024:
                break
    # A request is counted when its answer ends: only the server's stopping ends this one.
    wait_until(lambda: handle.stats().count("GET /_sandbox/files/{id}/{n}.png", 200) == 1)
    assert client.get("/v1/account").status_code == 200


def test_a_bad_download_rate_below_one_lets_a_fresh_get_fix_it(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    handle = make_sandbox(bad_downloads="empty", bad_download_rate=0.5, seed=3)
    client = api(handle)
    project_id = create(client, image_count=2, model="flux-schnell")
    wait_status(client, project_id, "complete")
    counts = {len(client.get(project_path(project_id)).json()["downloads"]) for _ in range(40)}
    assert counts == {0, 2}


def test_a_spoiled_url_cannot_be_unspoiled(make_sandbox: MakeSandbox, api: ApiFactory) -> None:
    handle = make_sandbox(bad_downloads="html")
    (item,) = complete(api(handle))["downloads"]
    assert "&b=html" in item["url"]
    assert httpx.get(item["url"].replace("&b=html", ""), timeout=10).status_code == 403
    assert httpx.get(item["url"].replace("b=html", "b=huge"), timeout=10).status_code == 403


# --------------------------------------------------------------------------- garbled creates


def raw_create(handle: SandboxHandle, timeout: httpx.Timeout | float = 10.0) -> httpx.Response:
    with httpx.Client(
        base_url=handle.base_url,
        headers={"Authorization": f"Bearer {handle.key}"},
        timeout=timeout,
    ) as client:
        return client.post(CREATE, json=body())


def assert_charged_once(handle: SandboxHandle, mode: str) -> None:
    """The project exists, was charged, and the journal says how its answer was spoiled."""
    (entry,) = handle.journal()
    assert entry.garbled == mode
    assert entry.credits_charged == 5
    assert handle.account_credits == 1_000_000 - 5
    with httpx.Client(
        base_url=handle.base_url, headers={"Authorization": f"Bearer {handle.key}"}, timeout=10
    ) as client:
        assert wait_status(client, entry.id, "complete")["credits_charged"] == 5
    assert handle.stats().garbled == 1


@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("no-id", lambda d: "id" not in d and d["credits_charged"] == 5),
        ("no-credits", lambda d: set(d) == {"id"}),
        ("string-credits", lambda d: d["credits_charged"] == "5"),
        ("float-credits", lambda d: d["credits_charged"] == 5.5),
        ("bool-credits", lambda d: d["credits_charged"] is True),
        ("negative-credits", lambda d: d["credits_charged"] == -5),
        ("huge-credits", lambda d: d["credits_charged"] == 10**18),
    ],
)
def test_garbled_json_answers(
    make_sandbox: MakeSandbox, mode: str, check: Callable[[dict[str, Any]], bool]
) -> None:
    handle = make_sandbox(create_garble=mode)
    response = raw_create(handle)
    assert response.status_code == 200
    document = response.json()
    assert check(document), document
    assert "frame_cost" not in document or mode == "no-id"
    assert_charged_once(handle, mode)


def test_a_non_json_answer(make_sandbox: MakeSandbox) -> None:
    handle = make_sandbox(create_garble="non-json")
    response = raw_create(handle)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    with pytest.raises(json.JSONDecodeError):
        response.json()
    assert_charged_once(handle, "non-json")


@pytest.mark.parametrize(("mode", "status"), [("status-204", 204), ("status-302", 302)])
def test_status_garbles(make_sandbox: MakeSandbox, mode: str, status: int) -> None:
    handle = make_sandbox(create_garble=mode)
    response = raw_create(handle)
    assert response.status_code == status
    assert response.content == b""
    if status == 302:
        assert response.headers["location"].startswith("/login")
    assert_charged_once(handle, mode)


def test_a_slow_drip_answer_arrives_a_byte_at_a_time(make_sandbox: MakeSandbox) -> None:
    handle = make_sandbox(create_garble="slow-drip", drip_seconds=0.01)
    started = time.monotonic()
    response = raw_create(handle)
    elapsed = time.monotonic() - started
    document = response.json()  # whole in the end
    assert document["credits_charged"] == 5
    assert elapsed >= 0.01 * (len(response.content) - 1)
    assert_charged_once(handle, "slow-drip")


def test_a_slow_drip_never_trips_a_per_read_timeout_of_a_patient_client(
    make_sandbox: MakeSandbox,
) -> None:
    # Each byte comes within the read timeout, so only an overall deadline stops it:
    # here the client gives up by its own clock after three bytes.
    handle = make_sandbox(create_garble="slow-drip", drip_seconds=0.2)
    with (
        httpx.Client(
            base_url=handle.base_url,
            headers={"Authorization": f"Bearer {handle.key}"},
            timeout=httpx.Timeout(5.0, read=1.0),
        ) as client,
        client.stream("POST", CREATE, json=body()) as response,
    ):
        assert response.status_code == 200
        received = b""
        for chunk in response.iter_raw():
            received += chunk
            if len(received) >= 3:
                break
    assert received == b'{"i'
    assert_charged_once(handle, "slow-drip")


def test_an_endless_answer_never_ends(make_sandbox: MakeSandbox) -> None:
    handle = make_sandbox(create_garble="endless")
    with (
        httpx.Client(
            base_url=handle.base_url,
            headers={"Authorization": f"Bearer {handle.key}"},
            timeout=10,
        ) as client,
        client.stream("POST", CREATE, json=body()) as response,
    ):
        assert response.status_code == 200
        seen = 0
        start = b""
        for chunk in response.iter_raw():
            if len(start) < 64:
                start += chunk[:64]
            seen += len(chunk)
            if seen > 8 * 1024 * 1024:
                break
    assert start.startswith(b'{"id":"c')
    assert seen > 8 * 1024 * 1024
    assert_charged_once(handle, "endless")


def test_a_server_stops_promptly_in_the_middle_of_an_endless_answer() -> None:
    from batcher.sandbox import running_sandbox

    outcome: list[BaseException | None] = []
    with running_sandbox(SandboxConfig(create_garble="slow-drip", drip_seconds=60.0)) as handle:

        def hold() -> None:
            try:
                raw_create(handle, timeout=120.0)
                outcome.append(None)
            except httpx.HTTPError as exc:
                outcome.append(exc)

        holder = threading.Thread(target=hold)
        holder.start()
        wait_until(lambda: handle.journal())
        started = time.monotonic()
    assert time.monotonic() - started < 2.5  # not the 3 s grace period, let alone 60 s
    holder.join(10)
    assert isinstance(outcome[0], httpx.RemoteProtocolError)  # cut off, not answered


def test_garble_rate_is_a_share_and_the_journal_tells_them_apart(
    make_sandbox: MakeSandbox,
) -> None:
    handle = make_sandbox(create_garble="no-id", create_garble_rate=0.5, seed=5)
    with httpx.Client(
        base_url=handle.base_url, headers={"Authorization": f"Bearer {handle.key}"}, timeout=10
    ) as client:
        answers = [client.post(CREATE, json=body()).json() for _ in range(60)]
    journal = handle.journal()
    assert len(journal) == 60
    garbled = [entry for entry in journal if entry.garbled == "no-id"]
    assert 15 < len(garbled) < 45
    assert [("id" not in a) for a in answers] == [e.garbled == "no-id" for e in journal]
    assert handle.stats().garbled == len(garbled)
    assert sum(entry.credits_charged for entry in journal) == 300


# --------------------------------------------------------------------------- settings


def test_every_fault_is_runtime_settable_through_the_faults_endpoint(
    sandbox_reset: SandboxHandle,
) -> None:
    url = sandbox_reset.base_url + "/_sandbox/faults"
    changes = {
        "poll_404_rate": 0.1,
        "surcharge_rate": 0.2,
        "stuck_rate": 0.3,
        "cancel_rate": 0.4,
        "bad_downloads": "huge",
        "bad_download_rate": 0.5,
        "huge_download_bytes": 1024,
        "create_garble": "endless",
        "create_garble_rate": 0.25,
        "drip_seconds": 2,
        "image_format": "webp",
    }
    answer = httpx.post(url, json=changes, timeout=10).json()
    assert {name: answer[name] for name in changes} == changes
    assert sandbox_reset.config.drip_seconds == 2.0
    off = httpx.post(url, json={"bad_downloads": "off", "create_garble": None}, timeout=10)
    assert off.json()["bad_downloads"] is None
    assert off.json()["create_garble"] is None
    for bad, field in (
        ({"bad_downloads": "gzip-bomb"}, "bad_downloads"),
        ({"create_garble": "teapot"}, "create_garble"),
        ({"image_format": "gif"}, "image_format"),
        ({"stuck_rate": 2}, "stuck_rate"),
        ({"huge_download_bytes": -1}, "huge_download_bytes"),
    ):
        refused = httpx.post(url, json=bad, timeout=10)
        assert refused.status_code == 400
        assert field in refused.json()["message"]


def test_every_garble_mode_is_known() -> None:
    assert set(CREATE_GARBLES) == {
        "non-json",
        "no-id",
        "no-credits",
        "string-credits",
        "float-credits",
        "bool-credits",
        "negative-credits",
        "huge-credits",
        "status-204",
        "status-302",
        "slow-drip",
        "endless",
    }


def test_the_sandbox_command_takes_the_fault_flags() -> None:
    command = [
        sys.executable,
        "-m",
        "batcher",
        "sandbox",
        "--poll-404-rate",
        "0.1",
        "--surcharge-rate",
        "0.2",
        "--stuck-rate",
        "0.3",
        "--cancel-rate",
        "0.4",
        "--bad-downloads",
        "short",
        "--bad-download-rate",
        "0.5",
        "--create-garble",
        "float-credits",
        "--create-garble-rate",
        "0.6",
        "--drip-seconds",
        "1.5",
        "--image-format",
        "mixed",
        "--huge-download-bytes",
        "4096",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        faults = httpx.get(url + "/_sandbox/faults", timeout=10).json()
    finally:
        process.kill()
        _, stderr = process.communicate(timeout=10)
    assert faults["poll_404_rate"] == 0.1
    assert faults["surcharge_rate"] == 0.2
    assert faults["stuck_rate"] == 0.3
    assert faults["cancel_rate"] == 0.4
    assert faults["bad_downloads"] == "short"
    assert faults["bad_download_rate"] == 0.5
    assert faults["create_garble"] == "float-credits"
    assert faults["create_garble_rate"] == 0.6
    assert faults["drip_seconds"] == 1.5
    assert faults["image_format"] == "mixed"
    assert faults["huge_download_bytes"] == 4096
    assert "create_garble=float-credits" in stderr  # the banner names the faults


@pytest.mark.parametrize(
    "flags",
    [
        ["--bad-downloads", "gzip"],
        ["--create-garble", "teapot"],
        ["--image-format", "gif"],
        ["--stuck-rate", "1.5"],
    ],
)
def test_the_sandbox_command_refuses_bad_fault_flags(flags: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "batcher", "sandbox", *flags],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert flags[0] in result.stderr
    assert result.stdout == ""
