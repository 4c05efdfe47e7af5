"""Signed download URLs: real images, no bearer needed, expiry, tampering, fresh URLs,
and the image formats."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from PIL import Image
from sandbox_support import ApiFactory, MakeSandbox, create, wait_status

from batcher.sandbox import ManualClock, SandboxHandle

ManualSandbox = Callable[..., tuple[SandboxHandle, ManualClock]]


def downloads(client: httpx.Client, project_id: str) -> list[dict[str, Any]]:
    document = wait_status(client, project_id, "complete")
    result: list[dict[str, Any]] = document["downloads"]
    return result


def test_downloads_are_pngs_showing_each_image(
    client: httpx.Client, sandbox: SandboxHandle
) -> None:
    project_id = create(client, image_count=4, model="flux-schnell", aspect_ratio="16:9")
    items = downloads(client, project_id)
    assert len(items) == 4
    assert len({item["url"] for item in items}) == 4
    images = []
    for item in items:
        assert item["url"].startswith(sandbox.base_url + "/_sandbox/files/")
        response = httpx.get(item["url"], timeout=10)  # no Authorization header
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(response.content))
        image.load()
        assert image.format == "PNG"
        assert image.size == (512, 288)
        images.append(response.content)
    assert len(set(images)) == 4  # each shows its own index
    again = httpx.get(items[0]["url"], timeout=10)
    assert again.content == images[0]


def test_portrait_and_square_sizes(client: httpx.Client) -> None:
    for ratio, size in (("9:16", (288, 512)), ("1:1", (512, 512))):
        (item,) = downloads(client, create(client, aspect_ratio=ratio))
        content = httpx.get(item["url"], timeout=10).content
        assert Image.open(io.BytesIO(content)).size == size


def test_expire_downloads_makes_issued_urls_403_and_a_new_get_gives_fresh_ones(
    sandbox: SandboxHandle, client: httpx.Client
) -> None:
    project_id = create(client)
    (old,) = downloads(client, project_id)
    assert httpx.get(old["url"], timeout=10).status_code == 200
    response = httpx.post(sandbox.base_url + "/_sandbox/expire-downloads", timeout=10)
    assert response.status_code == 204
    expired = httpx.get(old["url"], timeout=10)
    assert expired.status_code == 403
    assert "expired" in expired.json()["message"]
    (fresh,) = downloads(client, project_id)
    assert fresh["url"] != old["url"]
    assert httpx.get(fresh["url"], timeout=10).status_code == 200
    sandbox.expire_downloads()  # the same from Python
    assert httpx.get(fresh["url"], timeout=10).status_code == 403


def test_urls_expire_after_the_ttl(manual_sandbox: ManualSandbox, api: ApiFactory) -> None:
    # The emulator's clock, not the wall's: no sleeping, and exact to the millisecond.
    handle, clock = manual_sandbox(download_ttl=0.3)
    client = api(handle)
    project_id = create(client)
    clock.advance(10.0)  # the render ends
    (item,) = downloads(client, project_id)
    assert httpx.get(item["url"], timeout=10).status_code == 200
    clock.advance(0.299)
    assert httpx.get(item["url"], timeout=10).status_code == 200
    clock.advance(0.001)
    expired = httpx.get(item["url"], timeout=10)
    assert expired.status_code == 403
    assert "expired" in expired.json()["message"]
    (fresh,) = downloads(client, project_id)
    assert httpx.get(fresh["url"], timeout=10).status_code == 200


def test_each_get_issues_urls_valid_for_the_ttl_from_then(
    client: httpx.Client, sandbox: SandboxHandle
) -> None:
    project_id = create(client)
    (item,) = downloads(client, project_id)
    remaining = datetime.fromisoformat(item["expires_at"]) - datetime.now(UTC)
    assert abs(remaining.total_seconds() - sandbox.config.download_ttl) < 5


@pytest.mark.parametrize(
    "tamper",
    [
        lambda url: url.replace("signature=", "signature=0"),
        lambda url: url.replace("/0.png", "/1.png"),
        lambda url: url.replace("expires=", "expires=9"),
        lambda url: re.sub(r"&g=\d+", "&g=999", url),
        lambda url: url.split("?")[0],
    ],
    ids=["signature", "index", "expiry", "generation", "unsigned"],
)
def test_tampered_urls_are_403(client: httpx.Client, tamper: Any) -> None:
    project_id = create(client, image_count=2, model="flux-schnell")
    url = downloads(client, project_id)[0]["url"]
    response = httpx.get(tamper(url), timeout=10)
    assert response.status_code == 403
    assert response.json()["message"]


def test_file_paths_that_are_not_images_are_404(sandbox: SandboxHandle) -> None:
    for path in ("/_sandbox/files/abc", "/_sandbox/files/abc/0.jpg", "/_sandbox/files/abc/x.png"):
        assert httpx.get(sandbox.base_url + path, timeout=10).status_code == 404


def test_downloads_are_counted(make_sandbox: MakeSandbox, api: ApiFactory) -> None:
    handle = make_sandbox()
    client = api(handle)
    (item,) = downloads(client, create(client))
    httpx.get(item["url"], timeout=10)
    httpx.get(item["url"] + "x", timeout=10)
    assert handle.stats().requests["GET /_sandbox/files/{id}/{n}.png"] == {"200": 1, "403": 1}


@pytest.mark.parametrize(
    ("image_format", "decoded", "content_type"),
    [("png", "PNG", "image/png"), ("jpeg", "JPEG", "image/jpeg"), ("webp", "WEBP", "image/webp")],
)
def test_image_format_sets_the_bytes_not_the_suffix(
    make_sandbox: MakeSandbox,
    api: ApiFactory,
    image_format: str,
    decoded: str,
    content_type: str,
) -> None:
    handle = make_sandbox(image_format=image_format)
    client = api(handle)
    items = downloads(
        client, create(client, image_count=2, model="flux-schnell", aspect_ratio="16:9")
    )
    for item in items:
        assert item["url"].split("?")[0].endswith(".png")  # whatever the bytes are
        response = httpx.get(item["url"], timeout=10)
        assert response.headers["content-type"] == content_type
        image = Image.open(io.BytesIO(response.content))
        image.load()
        assert image.format == decoded
        assert image.size == (512, 288)


def test_mixed_formats_rotate_and_stay_put(make_sandbox: MakeSandbox, api: ApiFactory) -> None:
    handle = make_sandbox(image_format="mixed")
    client = api(handle)
    seen = []
    for _ in range(2):
        items = downloads(client, create(client, image_count=3, model="flux-schnell"))
        contents = [httpx.get(item["url"], timeout=10).content for item in items]
        seen.append([Image.open(io.BytesIO(content)).format for content in contents])
        assert httpx.get(items[0]["url"], timeout=10).content == contents[0]  # the same file
    assert sorted(seen[0]) == sorted(seen[1]) == ["JPEG", "PNG", "WEBP"]
    assert seen[0] != seen[1]  # the rotation moves on from project to project


def test_the_format_can_change_on_a_running_sandbox(
    sandbox_reset: SandboxHandle, client: httpx.Client
) -> None:
    project_id = create(client)
    (item,) = downloads(client, project_id)
    assert httpx.get(item["url"], timeout=10).content.startswith(b"\x89PNG")
    sandbox_reset.set_faults(image_format="jpeg")
    assert httpx.get(item["url"], timeout=10).content.startswith(b"\xff\xd8\xff")
