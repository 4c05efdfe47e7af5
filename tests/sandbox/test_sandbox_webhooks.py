"""Webhooks: events when renders end, signed, retried with backoff, dropped,
duplicated and foreign on demand, and a journal of every attempt.

The rules are driven first on the emulator with a manual clock (no server),
then over real HTTP to a receiver on loopback, with the emulator's clock or
a manual one.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sandbox_support import (
    ApiFactory,
    MakeSandbox,
    Receiver,
    body,
    create,
    wait_until,
)

from batcher.sandbox import ManualClock, SandboxConfig, SandboxHandle, sign
from batcher.sandbox.emulator import Emulator, Tick

SECRET = "whsec_sandbox_test_secret"
HOOK = "http://127.0.0.1:9/hook"  # never contacted by the emulator-level tests

MakeReceiver = Callable[..., Receiver]
ManualSandbox = Callable[..., tuple[SandboxHandle, ManualClock]]


def expected_signature(timestamp: str, raw: bytes) -> str:
    """Computed here independently of the sandbox's own signing code."""
    return hmac.new(SECRET.encode(), timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- the rules


def emulator(clock: ManualClock, **config: Any) -> Emulator:
    settings: dict[str, Any] = {
        "render_seconds": 10.0,
        "render_jitter": 0.0,
        "webhook_url": HOOK,
        "webhook_secret": SECRET,
        **config,
    }
    return Emulator(SandboxConfig(**settings), clock=clock)


def created(emu: Emulator, **overrides: Any) -> str:
    reply = emu.create(json.dumps(body(**overrides)).encode())
    assert reply.status == 200, reply.body
    project_id: str = json.loads(reply.body)["id"]
    return project_id


def events(tick: Tick) -> list[dict[str, Any]]:
    return [json.loads(outgoing.body) for outgoing in tick.outgoing]


def test_no_events_and_no_alarm_without_a_url() -> None:
    clock = ManualClock()
    emu = emulator(clock, webhook_url=None, webhook_secret=None)
    created(emu)
    assert emu.tick() == Tick([], None)
    clock.advance(10.0)
    assert emu.tick() == Tick([], None)
    assert emu.webhooks() == []


def test_the_event_leaves_at_the_render_end_with_the_get_shape_as_payload() -> None:
    clock = ManualClock()
    emu = emulator(clock)
    emu.set_event_host("sandbox.test")
    project_id = created(emu, image_count=2, model="flux-schnell")
    tick = emu.tick()
    assert tick.outgoing == []
    assert tick.wake_at == clock.monotonic() + 10.0  # the scheduler's alarm: the render end
    clock.advance(9.999)
    assert emu.tick().outgoing == []
    clock.advance(0.001)
    tick = emu.tick()
    (event,) = events(tick)
    assert tick.outgoing[0].url == HOOK
    assert event["type"] == "image.completed"
    poll = json.loads(emu.project(project_id, "sandbox.test").body)
    assert event["payload"] == poll  # the same instant: even the signed URLs agree
    assert event["payload"]["status"] == "complete"
    assert len(event["payload"]["downloads"]) == 2
    assert tick.wake_at is None  # nothing more to do


@pytest.mark.parametrize(
    ("faults", "status", "credits"),
    [({"render_error_rate": 1.0}, "error", 0), ({"cancel_rate": 1.0}, "canceled", 5)],
)
def test_failed_and_canceled_renders_send_image_errored(
    faults: dict[str, float], status: str, credits: int
) -> None:
    clock = ManualClock()
    emu = emulator(clock, **faults)
    created(emu)
    clock.advance(10.0)
    (event,) = events(emu.tick())
    assert event["type"] == "image.errored"
    assert event["payload"]["status"] == status
    assert event["payload"]["credits_charged"] == credits
    assert event["payload"]["downloads"] == []
    assert set(event["payload"]["error"]) == {"code", "message"}


def test_a_stuck_render_sends_nothing_and_sets_no_alarm() -> None:
    clock = ManualClock()
    emu = emulator(clock, stuck_rate=1.0)
    created(emu)
    assert emu.tick() == Tick([], None)
    clock.advance(86_400.0)
    assert emu.tick() == Tick([], None)


def test_failed_attempts_are_retried_after_1_2_4_8_seconds_then_given_up() -> None:
    clock = ManualClock()
    emu = emulator(clock, webhook_attempts=5)
    created(emu)
    clock.advance(10.0)
    start = clock.monotonic()
    offsets = []
    for attempt in range(5):
        tick = emu.tick()
        (outgoing,) = tick.outgoing
        offsets.append(clock.monotonic() - start)
        emu.record_webhook(outgoing.delivery_id, int(clock.wall()), 500, None)
        wake_at = emu.tick().wake_at
        if attempt == 4:
            assert wake_at is None
            break
        assert wake_at is not None
        clock.advance(wake_at - clock.monotonic() - 0.001)
        assert emu.tick().outgoing == []  # not a moment early
        clock.advance(0.001)
    assert offsets == pytest.approx([0, 1, 3, 7, 15])
    (delivery,) = emu.webhooks()
    assert delivery.state == "failed"
    assert [a.status for a in delivery.attempts] == [500] * 5
    assert [a.after for a in delivery.attempts] == pytest.approx([0, 1, 3, 7, 15])


def test_a_2xx_answer_delivers_and_a_connection_failure_is_retried() -> None:
    clock = ManualClock()
    emu = emulator(clock, webhook_backoff=0.5)
    created(emu)
    clock.advance(10.0)
    (outgoing,) = emu.tick().outgoing
    emu.record_webhook(outgoing.delivery_id, 1, None, "ConnectError: refused")
    clock.advance(0.5)
    (again,) = emu.tick().outgoing
    assert again.body == outgoing.body  # the same raw body: only the signature is new
    emu.record_webhook(again.delivery_id, 2, 204, None)
    (delivery,) = emu.webhooks()
    assert delivery.state == "delivered"
    assert [(a.status, a.error) for a in delivery.attempts] == [
        (None, "ConnectError: refused"),
        (204, None),
    ]
    assert emu.tick() == Tick([], None)


def test_drop_duplicate_and_foreign_events() -> None:
    clock = ManualClock()
    emu = emulator(clock, webhook_drop_rate=1.0)
    dropped = created(emu)
    clock.advance(10.0)
    assert emu.tick().outgoing == []
    emu.set_faults(
        {"webhook_drop_rate": 0.0, "webhook_duplicate_rate": 1.0, "webhook_foreign_rate": 1.0}
    )
    ours = created(emu)
    clock.advance(10.0)
    sent = emu.tick().outgoing
    assert len(sent) == 3
    journal = {(d.project_id, d.copy): d for d in emu.webhooks()}
    assert journal[(dropped, 1)].state == "dropped"
    assert journal[(dropped, 1)].attempts == ()
    assert journal[(ours, 1)].event_id == journal[(ours, 2)].event_id
    assert journal[(ours, 1)].body == journal[(ours, 2)].body
    (foreign,) = [d for d in journal.values() if d.foreign]
    assert foreign.project_id not in {dropped, ours}
    assert foreign.payload["id"] == foreign.project_id
    assert emu.project(foreign.project_id, "sandbox.test").status == 404  # not this account's
    assert {o.delivery_id for o in sent} == {
        journal[(ours, 1)].id,
        journal[(ours, 2)].id,
        foreign.id,
    }
    counts = emu.stats().webhooks
    assert counts is not None
    assert counts["events"] == 3
    assert counts["dropped"] == 1
    assert counts["sending"] == 3


def test_the_same_seed_drops_the_same_events() -> None:
    def dropped(seed: int) -> list[str]:
        clock = ManualClock()
        emu = emulator(clock, webhook_drop_rate=0.5, seed=seed)
        ids = [created(emu) for _ in range(30)]
        clock.advance(10.0)
        emu.tick()
        states = {d.project_id: d.state for d in emu.webhooks()}
        return [states[i] for i in ids]

    assert dropped(4) == dropped(4)
    assert set(dropped(4)) == {"dropped", "sending"}


def test_sign_is_hmac_sha256_over_timestamp_dot_body() -> None:
    raw = b'{"type":"image.completed","payload":{}}'
    assert sign(SECRET, 1767225600, raw) == expected_signature("1767225600", raw)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"webhook_url": "http://x/hook"}, "webhook_secret"),
        ({"webhook_url": "ftp://x/hook", "webhook_secret": "s"}, "webhook_url"),
        ({"webhook_url": "not a url", "webhook_secret": "s"}, "webhook_url"),
        ({"webhook_secret": ""}, "webhook_secret"),
        ({"webhook_attempts": 0}, "webhook_attempts"),
        ({"webhook_backoff": -1.0}, "webhook_backoff"),
        ({"webhook_drop_rate": 1.5}, "webhook_drop_rate"),
    ],
)
def test_webhook_settings_are_checked(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SandboxConfig(**settings)


def test_the_secret_is_fixed_and_never_shown() -> None:
    config = SandboxConfig(webhook_url="http://x/h", webhook_secret="whsec_hidden")
    assert "whsec_hidden" not in repr(config)
    assert "webhook_secret" not in config.runtime_settings()
    with pytest.raises(ValueError, match="cannot be changed"):
        config.with_changes({"webhook_secret": "other"})


# --------------------------------------------------------------------------- over HTTP


def webhook_sandbox(make_sandbox: MakeSandbox, hook: Receiver, **config: Any) -> SandboxHandle:
    return make_sandbox(webhook_url=hook.url, webhook_secret=SECRET, webhook_backoff=0.05, **config)


def test_an_event_arrives_signed_with_no_poll_at_all(
    make_sandbox: MakeSandbox, api: ApiFactory, receiver: MakeReceiver
) -> None:
    hook = receiver()
    handle = webhook_sandbox(make_sandbox, hook)
    project_id = create(api(handle), image_count=2, model="flux-schnell")
    (event,) = hook.wait_for(1)
    assert handle.stats().count("GET /v1/image-projects/{id}") == 0  # nobody polled
    assert event.path == "/hooks/magic-hour"
    assert event.headers["content-type"] == "application/json"
    timestamp = event.headers["magic-hour-event-timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    assert event.headers["magic-hour-event-signature"] == expected_signature(timestamp, event.body)
    document = event.document
    assert set(document) == {"type", "payload"}
    assert document["type"] == "image.completed"
    payload = document["payload"]
    poll = api(handle).get(f"/v1/image-projects/{project_id}").json()
    assert set(payload) == set(poll)
    assert {k: v for k, v in payload.items() if k != "downloads"} == {
        k: v for k, v in poll.items() if k != "downloads"
    }
    for download in payload["downloads"]:  # they point at this server and open
        response = httpx.get(download["url"], timeout=10)
        assert response.status_code == 200
        assert response.content.startswith(b"\x89PNG")
    (delivery,) = handle.webhooks()
    assert delivery.state == "delivered"
    assert [a.status for a in delivery.attempts] == [200]


def test_non_2xx_answers_are_retried_until_one_is_taken(
    make_sandbox: MakeSandbox, api: ApiFactory, receiver: MakeReceiver
) -> None:
    hook = receiver(statuses=[500, 503, 404])
    handle = webhook_sandbox(make_sandbox, hook)
    create(api(handle))
    received = hook.wait_for(4)
    assert [r.status for r in received] == [500, 503, 404, 200]
    assert len({r.body for r in received}) == 1  # the same event each time
    for r in received:  # each attempt signed afresh
        timestamp = r.headers["magic-hour-event-timestamp"]
        assert r.headers["magic-hour-event-signature"] == expected_signature(timestamp, r.body)
    (delivery,) = wait_until(
        lambda: [d for d in handle.webhooks() if d.state == "delivered"] or None
    )
    assert [a.status for a in delivery.attempts] == [500, 503, 404, 200]
    sent = [attempt.after for attempt in delivery.attempts]
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent)]
    # At least the backoff after each failure (0.05 s base here, doubling).
    assert all(gap >= wanted for gap, wanted in zip(gaps, [0.05, 0.1, 0.2], strict=True))


def test_a_receiver_that_is_down_gets_the_event_when_it_comes_back(
    make_sandbox: MakeSandbox, api: ApiFactory, receiver: MakeReceiver
) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    handle = make_sandbox(
        webhook_url=f"http://127.0.0.1:{port}/h", webhook_secret=SECRET, webhook_backoff=0.05
    )
    create(api(handle))
    wait_until(lambda: len(handle.webhooks()) == 1 and len(handle.webhooks()[0].attempts) >= 2)
    (delivery,) = handle.webhooks()
    assert all(a.status is None and a.error for a in delivery.attempts)
    hook = receiver()
    handle.set_faults(webhook_url=hook.url)  # the retries go where the URL points now
    (event,) = hook.wait_for(1)
    assert event.document["type"] == "image.completed"


def test_backoff_follows_the_emulator_clock(
    manual_sandbox: ManualSandbox, api: ApiFactory, receiver: MakeReceiver
) -> None:
    hook = receiver(statuses=[500] * 5)
    handle, clock = manual_sandbox(webhook_secret=SECRET, webhook_attempts=5)
    handle.set_faults(webhook_url=hook.url)
    create(api(handle))

    def recorded(count: int) -> bool:
        # The answer is recorded after the receiver has sent it: wait for that,
        # since the retry is due `backoff` after the answer, on this clock.
        return sum(len(d.attempts) for d in handle.webhooks()) == count

    clock.advance(10.0)  # the render ends: the first attempt
    wait_until(lambda: recorded(1))
    for step, seen in ((1.0, 2), (2.0, 3), (4.0, 4), (8.0, 5)):
        # In two steps: an attempt made a moment early would show in `after` below.
        clock.advance(step - 0.001)
        clock.advance(0.001)
        hook.wait_for(seen)
        wait_until(lambda n=seen: recorded(n))
    (delivery,) = wait_until(lambda: [d for d in handle.webhooks() if d.state == "failed"] or None)
    # Each attempt left exactly when the clock reached it: 0, 1, 3, 7 and 15 s after the end.
    assert [a.after for a in delivery.attempts] == pytest.approx([0, 1, 3, 7, 15])
    assert [a.timestamp - delivery.attempts[0].timestamp for a in delivery.attempts] == [
        0,
        1,
        3,
        7,
        15,
    ]
    clock.advance(3600.0)
    assert len(hook.received) == 5  # given up


def test_each_render_end_fires_on_its_own(
    manual_sandbox: ManualSandbox, api: ApiFactory, receiver: MakeReceiver
) -> None:
    hook = receiver()
    handle, clock = manual_sandbox(webhook_secret=SECRET)
    handle.set_faults(webhook_url=hook.url)
    client = api(handle)
    ids = []
    for seconds in (3.0, 1.0, 2.0):
        handle.set_faults(render_seconds=seconds)
        ids.append(create(client))
    for step, project_id in ((1.0, ids[1]), (1.0, ids[2]), (1.0, ids[0])):
        clock.advance(step)
        received = hook.wait_for(len(hook.received) + 1)
        assert received[-1].document["payload"]["id"] == project_id
    assert len(hook.received) == 3


def test_a_render_ending_before_the_alarm_wakes_the_scheduler(
    make_sandbox: MakeSandbox, api: ApiFactory, receiver: MakeReceiver
) -> None:
    hook = receiver()
    handle = webhook_sandbox(make_sandbox, hook, render_seconds=60.0, render_jitter=0.0)
    client = api(handle)
    create(client)  # the scheduler's alarm is now a minute away
    handle.set_faults(render_seconds=0.05)
    quick = create(client)
    (event,) = hook.wait_for(1, timeout=20.0)  # far less than the minute
    assert event.document["payload"]["id"] == quick


def test_duplicates_and_foreign_events_over_http(
    make_sandbox: MakeSandbox, api: ApiFactory, receiver: MakeReceiver
) -> None:
    hook = receiver()
    handle = webhook_sandbox(
        make_sandbox, hook, webhook_duplicate_rate=1.0, webhook_foreign_rate=1.0
    )
    client = api(handle)
    project_id = create(client)
    received = hook.wait_for(3)
    ids = [r.document["payload"]["id"] for r in received]
    assert ids.count(project_id) == 2
    (foreign,) = [i for i in ids if i != project_id]
    assert client.get(f"/v1/image-projects/{foreign}").status_code == 404


def test_dropped_events_are_never_sent_but_journaled(
    make_sandbox: MakeSandbox, api: ApiFactory, receiver: MakeReceiver
) -> None:
    hook = receiver()
    handle = webhook_sandbox(make_sandbox, hook, webhook_drop_rate=1.0)
    client = api(handle)
    project_id = create(client)
    wait_until(lambda: handle.webhooks())
    handle.set_faults(webhook_drop_rate=0.0)
    second = create(client)
    (event,) = hook.wait_for(1)
    assert event.document["payload"]["id"] == second  # the first one never came
    journal = httpx.get(handle.base_url + "/_sandbox/webhooks", timeout=10).json()
    assert journal["url"] == hook.url
    by_project = {d["project_id"]: d for d in journal["deliveries"]}
    assert by_project[project_id]["state"] == "dropped"
    assert by_project[project_id]["attempts"] == []
    delivered = wait_until(
        lambda: httpx.get(handle.base_url + "/_sandbox/webhooks", timeout=10).json()["deliveries"][
            1
        ]["attempts"]
    )
    assert set(delivered[0]) == {"at", "after", "timestamp", "status", "error"}
    assert delivered[0]["status"] == 200
    assert set(by_project[second]) == {
        "id",
        "event_id",
        "type",
        "project_id",
        "foreign",
        "copy",
        "state",
        "queued_at",
        "attempts",
        "payload",
    }
    stats = httpx.get(handle.base_url + "/_sandbox/stats", timeout=10).json()
    assert stats["webhooks"]["dropped"] == 1
    assert stats["webhooks"]["events"] == 2


def test_webhooks_for_many_renders_each_arrive_once(
    make_sandbox: MakeSandbox, api: ApiFactory, receiver: MakeReceiver
) -> None:
    hook = receiver()
    handle = webhook_sandbox(make_sandbox, hook, render_seconds=0.2, render_jitter=0.5, seed=2)
    client = api(handle)
    ids = {create(client) for _ in range(40)}
    received = hook.wait_for(40)
    assert {r.document["payload"]["id"] for r in received} == ids
    assert all(r.document["payload"]["status"] == "complete" for r in received)
    assert handle.stats().count("GET /v1/image-projects/{id}") == 0


def test_the_webhook_url_can_be_set_on_a_running_sandbox(
    make_sandbox: MakeSandbox, api: ApiFactory, receiver: MakeReceiver
) -> None:
    hook = receiver()
    handle = make_sandbox(webhook_secret=SECRET)
    client = api(handle)
    create(client)  # no URL yet: no event, ever
    wait_until(lambda: handle.stats().in_flight == 0)
    changed = httpx.post(
        handle.base_url + "/_sandbox/faults", json={"webhook_url": hook.url}, timeout=10
    )
    assert changed.json()["webhook_url"] == hook.url
    project_id = create(client)
    (event,) = hook.wait_for(1)
    assert event.document["payload"]["id"] == project_id
    assert len(handle.webhooks()) == 1


def test_the_sandbox_command_sends_webhooks(receiver: MakeReceiver) -> None:
    hook = receiver()
    command = [
        sys.executable,
        "-m",
        "batcher",
        "sandbox",
        "--render-seconds",
        "0.05",
        "--webhook-url",
        hook.url,
        "--webhook-backoff",
        "0.05",
        "--webhook-duplicate-rate",
        "1",
    ]
    env = {"MAGIC_HOUR_WEBHOOK_SECRET": SECRET, "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        with httpx.Client(
            base_url=url, headers={"Authorization": "Bearer sandbox-key"}, timeout=10
        ) as client:
            project_id = create(client)
        received = hook.wait_for(2)
        assert [r.document["payload"]["id"] for r in received] == [project_id] * 2
        for r in received:
            timestamp = r.headers["magic-hour-event-timestamp"]
            assert r.headers["magic-hour-event-signature"] == expected_signature(timestamp, r.body)
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert hook.url in stderr
    assert SECRET not in stderr
    assert "Traceback" not in stderr


def test_the_sandbox_command_refuses_a_webhook_url_without_a_secret() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "batcher", "sandbox", "--webhook-url", "http://127.0.0.1:9/h"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "webhook_secret" in result.stderr
    assert result.stdout == ""
