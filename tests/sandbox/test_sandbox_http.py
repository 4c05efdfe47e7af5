"""Every endpoint and status code of the sandbox, over real HTTP."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
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

from batcher.errors import ConfigError
from batcher.sandbox import SANDBOX_KEY, SandboxConfig, SandboxHandle, running_sandbox

PROJECT_KEYS = {
    "id",
    "name",
    "status",
    "image_count",
    "type",
    "created_at",
    "enabled",
    "credits_charged",
    "total_frame_cost",
    "downloads",
    "error",
}


def test_create_answers_id_and_credits(client: httpx.Client, sandbox: SandboxHandle) -> None:
    response = client.post(CREATE, json=body(image_count=3, model="flux-schnell"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert set(document) == {"id", "credits_charged", "frame_cost"}
    assert document["credits_charged"] == document["frame_cost"] == 15
    assert re.fullmatch(r"c[0-9a-z]{24}", document["id"])
    entry = next(e for e in sandbox.journal() if e.id == document["id"])
    assert entry.credits_charged == 15
    assert entry.name == "test item"
    assert entry.body == body(image_count=3, model="flux-schnell")


def test_project_has_the_full_shape_and_completes(client: httpx.Client) -> None:
    project_id = create(client, image_count=2, model="qwen-image-2.1", name="shape")
    first = client.get(f"/v1/image-projects/{project_id}").json()
    assert set(first) == PROJECT_KEYS
    assert first["id"] == project_id
    assert first["name"] == "shape"
    assert first["type"] == "AI_IMAGE"
    assert first["image_count"] == 2
    assert first["enabled"] is True
    assert first["credits_charged"] == first["total_frame_cost"] == 20
    assert first["error"] is None
    created = datetime.fromisoformat(first["created_at"])
    assert created.utcoffset() is not None
    assert created.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60
    done = wait_status(client, project_id, "complete")
    assert len(done["downloads"]) == 2
    for download in done["downloads"]:
        assert set(download) == {"url", "expires_at"}
        assert datetime.fromisoformat(download["expires_at"]) > datetime.now(UTC)


def test_lifecycle_goes_queued_rendering_complete(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    handle = make_sandbox(render_seconds=0.8, render_jitter=0.0)
    client = api(handle)
    project_id = create(client)
    seen = [client.get(f"/v1/image-projects/{project_id}").json()["status"]]

    def probe() -> bool:
        status: str = client.get(f"/v1/image-projects/{project_id}").json()["status"]
        if status != seen[-1]:
            seen.append(status)
        return status == "complete"

    wait_until(probe)
    assert seen == ["queued", "rendering", "complete"]


def test_name_is_null_when_not_given(client: httpx.Client) -> None:
    project_id = create(client, name=None)
    assert client.get(f"/v1/image-projects/{project_id}").json()["name"] is None


def test_unknown_fields_are_ignored(client: httpx.Client) -> None:
    response = client.post(CREATE, json=body(future_field=1, style={"prompt": "p", "x": 2}))
    assert response.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": SANDBOX_KEY}],
    ids=["missing", "wrong key", "no scheme"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", CREATE),
        ("GET", "/v1/image-projects/cabc"),
        ("DELETE", "/v1/image-projects/cabc"),
        ("GET", "/v1/account"),
    ],
)
def test_every_api_endpoint_needs_the_key(
    sandbox_reset: SandboxHandle, headers: dict[str, str], method: str, path: str
) -> None:
    before = sandbox_reset.account_credits
    response = httpx.request(
        method, sandbox_reset.base_url + path, headers=headers, json=body(), timeout=10
    )
    assert response.status_code == 401
    assert response.json() == {"message": "Unauthorized"}
    assert sandbox_reset.account_credits == before


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe"],
    ids=["text", "array", "string", "empty", "not utf-8"],
)
def test_a_body_that_is_not_a_json_object_is_400(client: httpx.Client, content: bytes) -> None:
    response = client.post(CREATE, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["message"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"image_count": None}, "image_count"),
        ({"image_count": "1"}, "image_count"),
        ({"image_count": 1.0}, "image_count"),
        ({"image_count": True}, "image_count"),
        ({"image_count": 0}, "image_count"),
        ({"image_count": 17}, "image_count"),
        ({"image_count": 2, "model": "flux-2-klein"}, "image_count"),
        ({"image_count": 3, "model": "nano-banana-2"}, "image_count"),
        ({"style": None}, "style"),
        ({"style": "a prompt"}, "style"),
        ({"style": {}}, "style.prompt"),
        ({"style": {"prompt": ""}}, "style.prompt"),
        ({"style": {"prompt": "   "}}, "style.prompt"),
        ({"style": {"prompt": 5}}, "style.prompt"),
        ({"style": {"prompt": "p", "tool": "crayon"}}, "style.tool"),
        ({"style": {"prompt": "p", "tool": 3}}, "style.tool"),
        ({"style": {"prompt": "p", "quality_mode": "ultra"}}, "style.quality_mode"),
        ({"model": "dall-e"}, "model"),
        ({"model": 7}, "model"),
        ({"resolution": "8k"}, "resolution"),
        ({"resolution": "4k", "model": "krea-2"}, "resolution"),
        ({"resolution": "640px", "model": "nano-banana-pro"}, "resolution"),
        ({"aspect_ratio": "4:3"}, "aspect_ratio"),
        ({"orientation": "diagonal"}, "orientation"),
        ({"name": 12}, "name"),
    ],
)
def test_validation_failures_are_422_naming_the_field(
    client: httpx.Client, overrides: dict[str, Any], field: str
) -> None:
    response = client.post(CREATE, json=body(**overrides))
    assert response.status_code == 422
    message = response.json()["message"]
    assert message.startswith(f"{field}: "), message


def test_deprecated_auto_resolution_and_fields_are_accepted(client: httpx.Client) -> None:
    response = client.post(
        CREATE,
        json=body(
            resolution="auto",
            model=None,
            aspect_ratio=None,
            orientation="landscape",
            style={"prompt": "p", "quality_mode": "standard"},
        ),
    )
    assert response.status_code == 200
    assert response.json()["credits_charged"] == 5  # z-image-turbo


def test_tier_rules_are_403(make_sandbox: MakeSandbox, api: ApiFactory) -> None:
    client = api(make_sandbox(tier="free"))
    refused_model = client.post(CREATE, json=body(model="seedream-v4"))
    assert refused_model.status_code == 403
    assert "seedream-v4" in refused_model.json()["message"]
    refused_resolution = client.post(CREATE, json=body(resolution="1k"))
    assert refused_resolution.status_code == 403
    assert "lowest resolution" in refused_resolution.json()["message"]
    assert client.post(CREATE, json=body(resolution="640px")).status_code == 200
    assert client.post(CREATE, json=body(resolution="auto")).status_code == 200
    assert client.post(CREATE, json=body(resolution=None)).status_code == 200
    assert client.get("/v1/account").json()["tier"] == "free"


def test_paid_tier_gets_every_resolution(client: httpx.Client) -> None:
    response = client.post(CREATE, json=body(model="gpt-image-2", resolution="4k"))
    assert response.status_code == 200


def test_not_enough_credits_is_402_and_charges_nothing(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    handle = make_sandbox(credits=12)
    client = api(handle)
    assert client.post(CREATE, json=body(model="krea-2")).json()["credits_charged"] == 10
    refused = client.post(CREATE, json=body(model="krea-2"))
    assert refused.status_code == 402
    assert "credits" in refused.json()["message"]
    assert client.get("/v1/account").json()["credits"] == 2
    assert client.post(CREATE, json=body(model="z-image-turbo")).status_code == 402
    assert len(handle.journal()) == 1
    assert handle.account_credits == 2


def test_charge_factor_makes_the_server_charge_more(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    handle = make_sandbox(charge_factor=1.5)
    response = api(handle).post(CREATE, json=body(model="krea-2", resolution="1k"))
    assert response.json()["credits_charged"] == 15
    assert handle.account_credits == 1_000_000 - 15


def test_failed_renders_are_refunded(make_sandbox: MakeSandbox, api: ApiFactory) -> None:
    handle = make_sandbox(render_error_rate=1.0, credits=100)
    client = api(handle)
    project_id = create(client, model="nano-banana", image_count=2)
    assert client.get("/v1/account").json()["credits"] == 0
    document = wait_status(client, project_id, "error")
    assert document["credits_charged"] == 0
    assert document["total_frame_cost"] == 0
    assert document["downloads"] == []
    assert set(document["error"]) == {"code", "message"}
    assert client.get("/v1/account").json()["credits"] == 100
    (entry,) = handle.journal()
    assert (entry.credits_charged, entry.credits_refunded, entry.status) == (100, 100, "error")


def test_delete_disables_the_project(client: httpx.Client) -> None:
    project_id = create(client)
    done = wait_status(client, project_id, "complete")
    url = done["downloads"][0]["url"]
    response = client.delete(f"/v1/image-projects/{project_id}")
    assert response.status_code == 204
    assert response.content == b""
    after = client.get(f"/v1/image-projects/{project_id}").json()
    assert after["enabled"] is False
    assert after["downloads"] == []
    assert after["credits_charged"] == 5  # deleting refunds nothing
    assert httpx.get(url, timeout=10).status_code == 404


def test_account(client: httpx.Client, sandbox: SandboxHandle) -> None:
    document = client.get("/v1/account").json()
    assert set(document) == {"id", "email", "credits", "tier", "subscription"}
    assert document["tier"] == "creator"
    assert document["subscription"]["name"] == "Creator"  # the SDK's shape (test_sandbox_sdk)
    assert document["credits"] == sandbox.account_credits
    assert isinstance(document["id"], str)
    assert "@" in document["email"]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_unknown_project_is_404(client: httpx.Client, method: str) -> None:
    response = client.request(method, "/v1/image-projects/cnotaprojectatall000000000")
    assert response.status_code == 404
    assert response.json() == {"message": "Not Found"}


@pytest.mark.parametrize(
    "path", ["/", "/v1", "/v1/image-generator", "/v1/image-projects/", "/v1/image-projects/a/b"]
)
def test_unknown_paths_are_404(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["message"] == "Not Found"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", CREATE, "POST"),
        ("PUT", "/v1/image-projects/cabc", "GET, DELETE"),
        ("POST", "/v1/account", "GET"),
        ("DELETE", "/_sandbox/journal", "GET"),
    ],
)
def test_wrong_method_is_405(client: httpx.Client, method: str, path: str, allow: str) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json() == {"message": "Method Not Allowed"}


def test_journal_and_stats_over_http(make_sandbox: MakeSandbox, api: ApiFactory) -> None:
    handle = make_sandbox(credits=1000)
    client = api(handle)
    project_id = create(client, model="krea-2")
    client.post(CREATE, json=body(model="nope"))
    client.get(f"/v1/image-projects/{project_id}")
    api(handle, key="bad").get("/v1/account")
    journal = httpx.get(handle.base_url + "/_sandbox/journal", timeout=10).json()
    assert journal["credits"] == 990
    (entry,) = journal["entries"]
    assert entry["id"] == project_id
    assert entry["credits_charged"] == 10
    assert entry["credits_refunded"] == 0
    assert entry["dropped"] is False
    assert entry["body"]["model"] == "krea-2"
    assert entry["status"] in {"queued", "rendering", "complete"}
    assert datetime.fromisoformat(entry["time"]).tzinfo is not None
    stats = httpx.get(handle.base_url + "/_sandbox/stats", timeout=10).json()
    assert stats["requests"] == {
        "POST /v1/ai-image-generator": {"200": 1, "422": 1},
        "GET /v1/image-projects/{id}": {"200": 1},
        "GET /v1/account": {"401": 1},
    }
    assert stats["creates"] == 1
    assert stats["credits"] == 990
    assert stats["credits_charged"] == 10
    assert handle.stats().count("POST /v1/ai-image-generator") == 2


def test_faults_endpoint_changes_and_resets_settings(sandbox_reset: SandboxHandle) -> None:
    url = sandbox_reset.base_url + "/_sandbox/faults"
    changed = httpx.post(url, json={"error_rate": 0.5, "retry_after": 3}, timeout=10)
    assert changed.status_code == 200
    assert changed.json()["error_rate"] == 0.5
    assert changed.json()["retry_after"] == 3.0
    assert sandbox_reset.config.error_rate == 0.5
    assert httpx.get(url, timeout=10).json()["error_rate"] == 0.5
    bad = httpx.post(url, json={"error_rate": 5}, timeout=10)
    assert bad.status_code == 400
    assert "error_rate" in bad.json()["message"]
    assert httpx.post(url, json={"seed": 1}, timeout=10).status_code == 400
    assert httpx.post(url, content=b"[]", timeout=10).status_code == 400
    reset = httpx.post(url + "/reset", timeout=10)
    assert reset.json()["error_rate"] == 0.0
    assert reset.json()["retry_after"] is None


def test_running_sandbox_leaves_no_thread_behind() -> None:
    before = set(threading.enumerate())
    with running_sandbox() as handle:
        assert httpx.get(handle.base_url + "/_sandbox/stats", timeout=10).status_code == 200
        assert len(set(threading.enumerate()) - before) == 1
    assert set(threading.enumerate()) == before
    with pytest.raises(httpx.ConnectError):
        httpx.get(handle.base_url + "/_sandbox/stats", timeout=10)


def test_running_sandbox_rejects_an_unknown_tier() -> None:
    with pytest.raises(ConfigError, match="tier"), running_sandbox(SandboxConfig(tier="gold")):
        pass


def test_sandbox_stops_with_idle_keep_alive_connections_open(
    make_sandbox: MakeSandbox, api: ApiFactory
) -> None:
    # The client keeps its connection open; stopping must still be prompt and clean.
    with running_sandbox(SandboxConfig(render_seconds=0.05)) as handle:
        client = api(handle)
        assert client.get("/v1/account").status_code == 200
    with pytest.raises(httpx.TransportError):
        client.get("/v1/account")
