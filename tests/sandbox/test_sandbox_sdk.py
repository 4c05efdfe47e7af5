"""The official SDK (magic_hour 0.90.0) as the sandbox's conformance test.

What real users run must work against the sandbox unchanged: every answer
is parsed by the SDK's own pydantic models, which require every key they
name. A shape the sandbox gets wrong fails here as it would for a user.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import magic_hour  # the `test` extra installs it: a missing SDK fails, never skips
import pytest
from make_api_request import ApiError  # the SDK's own error type (its HTTP layer)
from PIL import Image
from sandbox_support import MakeSandbox, wait_until

from batcher.sandbox import SandboxHandle

SdkFactory = Callable[..., Any]


@pytest.fixture
def sdk() -> Iterator[SdkFactory]:
    """`sdk(handle, token=None)`: a magic_hour.Client of that sandbox, closed after the test."""
    transports: list[httpx.Client] = []

    def make(handle: SandboxHandle, token: str | None = None) -> Any:
        transport = httpx.Client(timeout=10.0)  # ours, so that it is closed
        transports.append(transport)
        return magic_hour.Client(
            token=handle.key if token is None else token,
            base_url=handle.base_url,
            httpx_client=transport,
        )

    yield make
    for transport in transports:
        transport.close()


@pytest.fixture
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's generate() polls every MAGIC_HOUR_POLL_INTERVAL seconds (0.5 by default)."""
    monkeypatch.setenv("MAGIC_HOUR_POLL_INTERVAL", "0.01")


def _image_format(path: Path) -> str:
    with Image.open(path) as image:
        image.load()
        return str(image.format)


@pytest.mark.parametrize(
    ("model", "resolution", "image_count", "credits"),
    [
        ("z-image-turbo", "640px", 1, 5),
        ("flux-schnell", "2k", 4, 20),
        ("krea-2", "1k", 1, 10),
        ("gpt-image-2", "4k", 2, 100),
        ("nano-banana-2.1", "1k", 9, 450),
        ("nano-banana-pro", "4k", 16, 2400),
        ("seedream", "auto", 1, 30),
        ("default", None, 3, 15),
    ],
)
def test_create_and_get_at_several_models_and_resolutions(
    sandbox: SandboxHandle,
    sdk: SdkFactory,
    model: str,
    resolution: str | None,
    image_count: int,
    credits: int,
) -> None:
    client = sdk(sandbox)
    extra = {} if resolution is None else {"resolution": resolution}
    created = client.v1.ai_image_generator.create(
        image_count=image_count,
        style={"prompt": f"A lighthouse by {model}", "tool": "general"},
        model=model,
        aspect_ratio="16:9",
        name=f"sdk {model}",
        **extra,
    )
    assert created.credits_charged == credits
    assert created.frame_cost == credits
    entry = next(e for e in sandbox.journal() if e.id == created.id)
    assert entry.credits_charged == credits
    assert entry.body["style"]["prompt"] == f"A lighthouse by {model}"

    first = client.v1.image_projects.get(id=created.id)
    assert first.id == created.id
    assert first.status in {"queued", "rendering", "complete"}
    assert first.name == f"sdk {model}"
    assert first.image_count == image_count
    assert first.credits_charged == first.total_frame_cost == credits
    assert first.enabled is True
    assert first.type_ == "AI_IMAGE"

    done = wait_until(
        lambda: (p := client.v1.image_projects.get(id=created.id)).status == "complete" and p
    )
    assert done.error is None
    assert len(done.downloads) == image_count
    for download in done.downloads:
        assert download.url.startswith(sandbox.base_url)
        assert download.expires_at


@pytest.mark.usefixtures("fast_polls")
@pytest.mark.parametrize("image_format", ["png", "mixed"])
def test_generate_polls_and_downloads_end_to_end(
    make_sandbox: MakeSandbox, sdk: SdkFactory, tmp_path: Path, image_format: str
) -> None:
    handle = make_sandbox(image_format=image_format, credits=1000)
    client = sdk(handle)
    result = client.v1.ai_image_generator.generate(
        image_count=3,
        style={"prompt": "A red bicycle on a beach at dawn"},
        model="flux-schnell",
        resolution="1k",
        wait_for_completion=True,
        download_outputs=True,
        download_directory=str(tmp_path),
    )
    assert result.status == "complete"
    assert result.credits_charged == 15
    assert len(result.downloaded_paths) == 3
    paths = [Path(path) for path in result.downloaded_paths]
    assert sorted(path.name for path in paths) == ["0.png", "1.png", "2.png"]  # the URL's name
    formats = [_image_format(path) for path in paths]
    if image_format == "png":
        assert formats == ["PNG"] * 3
    else:  # the suffix stays .png; the bytes say what they are
        assert sorted(formats) == ["JPEG", "PNG", "WEBP"]
    assert handle.account_credits == 985
    assert handle.stats().count("GET /_sandbox/files/{id}/{n}.png", 200) == 3


@pytest.mark.usefixtures("fast_polls")
@pytest.mark.parametrize(
    ("faults", "status", "credits", "code"),
    [
        ({"render_error_rate": 1.0}, "error", 0, "generation_failed"),
        ({"cancel_rate": 1.0}, "canceled", 5, "canceled"),
    ],
)
def test_generate_returns_a_failed_render_without_downloading(
    make_sandbox: MakeSandbox,
    sdk: SdkFactory,
    tmp_path: Path,
    faults: dict[str, float],
    status: str,
    credits: int,
    code: str,
) -> None:
    handle = make_sandbox(**faults)
    result = sdk(handle).v1.ai_image_generator.generate(
        image_count=1,
        style={"prompt": "p"},
        model="z-image-turbo",
        download_directory=str(tmp_path),
    )
    assert result.status == status
    assert result.credits_charged == credits
    assert result.error is not None
    assert result.error.code == code
    assert result.downloaded_paths is None
    assert list(tmp_path.iterdir()) == []


def test_delete(sandbox: SandboxHandle, sdk: SdkFactory) -> None:
    client = sdk(sandbox)
    created = client.v1.ai_image_generator.create(image_count=1, style={"prompt": "p"})
    wait_until(lambda: client.v1.image_projects.get(id=created.id).status == "complete")
    url = client.v1.image_projects.get(id=created.id).downloads[0].url
    assert client.v1.image_projects.delete(id=created.id) is None
    after = client.v1.image_projects.get(id=created.id)
    assert after.enabled is False
    assert after.downloads == []
    assert httpx.get(url, timeout=10).status_code == 404


@pytest.mark.parametrize("tier", ["free", "creator", "pro", "business"])
def test_account_list_at_every_tier(make_sandbox: MakeSandbox, sdk: SdkFactory, tier: str) -> None:
    handle = make_sandbox(tier=tier, credits=777)
    account = sdk(handle).v1.account.list()
    assert account.tier == tier
    assert account.credits == 777
    assert account.id
    assert account.email
    if tier == "free":
        assert account.subscription is None
        return
    subscription = account.subscription
    assert subscription is not None
    assert subscription.status == "active"
    assert subscription.name == tier.capitalize()
    assert subscription.billing_interval == "month"
    assert subscription.cancel_at_period_end is False
    assert subscription.current_period_end is not None
    assert subscription.discount is None
    assert subscription.price.amount > 0
    assert subscription.price.currency == "usd"


async def test_the_async_client_reads_the_account_and_projects(sandbox: SandboxHandle) -> None:
    async with httpx.AsyncClient(timeout=10.0) as transport:
        client = magic_hour.AsyncClient(
            token=sandbox.key, base_url=sandbox.base_url, httpx_client=transport
        )
        account = await client.v1.account.list()
        assert account.subscription is not None
        created = await client.v1.ai_image_generator.create(image_count=1, style={"prompt": "p"})
        project = await client.v1.image_projects.get(id=created.id)
        assert project.id == created.id


def _api_error(call: Callable[[], Any]) -> Any:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value


def test_401_for_a_wrong_key_on_every_endpoint(sandbox: SandboxHandle, sdk: SdkFactory) -> None:
    client = sdk(sandbox, token="not-the-key")
    calls: list[Callable[[], Any]] = [
        client.v1.account.list,
        lambda: client.v1.ai_image_generator.create(image_count=1, style={"prompt": "p"}),
        lambda: client.v1.image_projects.get(id="cabc"),
        lambda: client.v1.image_projects.delete(id="cabc"),
    ]
    for call in calls:
        error = _api_error(call)
        assert error.status_code == 401
        assert error.body == {"message": "Unauthorized"}


def test_402_when_the_balance_is_short(make_sandbox: MakeSandbox, sdk: SdkFactory) -> None:
    handle = make_sandbox(credits=4)
    client = sdk(handle)
    error = _api_error(
        lambda: client.v1.ai_image_generator.create(
            image_count=1, style={"prompt": "p"}, model="z-image-turbo"
        )
    )
    assert error.status_code == 402
    assert "credits" in error.body["message"]
    assert handle.journal() == []


def test_403_for_what_the_plan_lacks(make_sandbox: MakeSandbox, sdk: SdkFactory) -> None:
    client = sdk(make_sandbox(tier="free"))
    error = _api_error(
        lambda: client.v1.ai_image_generator.create(
            image_count=1, style={"prompt": "p"}, model="seedream-v4"
        )
    )
    assert error.status_code == 403
    assert "seedream-v4" in error.body["message"]
    error = _api_error(
        lambda: client.v1.ai_image_generator.create(
            image_count=1, style={"prompt": "p"}, model="z-image-turbo", resolution="2k"
        )
    )
    assert error.status_code == 403


def test_404_for_an_unknown_project(sandbox: SandboxHandle, sdk: SdkFactory) -> None:
    client = sdk(sandbox)
    for call in (
        lambda: client.v1.image_projects.get(id="cnotaprojectatall000000000"),
        lambda: client.v1.image_projects.delete(id="cnotaprojectatall000000000"),
    ):
        error = _api_error(call)
        assert error.status_code == 404
        assert error.body == {"message": "Not Found"}


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"image_count": 2, "model": "flux-2-klein"}, "image_count"),
        ({"image_count": 3, "model": "nano-banana-2"}, "image_count"),
        ({"image_count": 1, "model": "krea-2", "resolution": "4k"}, "resolution"),
        ({"image_count": 17}, "image_count"),
    ],
)
def test_422_names_the_field(
    sandbox: SandboxHandle, sdk: SdkFactory, arguments: dict[str, Any], field: str
) -> None:
    client = sdk(sandbox)
    before = len(sandbox.journal())
    error = _api_error(
        lambda: client.v1.ai_image_generator.create(style={"prompt": "p"}, **arguments)
    )
    assert error.status_code == 422
    assert error.body["message"].startswith(f"{field}: ")
    assert len(sandbox.journal()) == before


def test_the_sdk_reads_a_downloaded_image_we_served(
    sandbox: SandboxHandle, sdk: SdkFactory
) -> None:
    # The download needs no bearer: the SDK's helper fetches it with a bare client.
    client = sdk(sandbox)
    created = client.v1.ai_image_generator.create(
        image_count=1, style={"prompt": "p"}, aspect_ratio="9:16"
    )
    done = wait_until(
        lambda: (p := client.v1.image_projects.get(id=created.id)).status == "complete" and p
    )
    content = httpx.get(done.downloads[0].url, timeout=10).content
    with Image.open(io.BytesIO(content)) as image:
        assert image.size == (288, 512)
