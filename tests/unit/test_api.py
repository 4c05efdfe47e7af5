"""MagicHourClient against httpx.MockTransport: parsing, error mapping, secrets, downloads."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from batcher.client.magic_hour import (
    CREATE_PATH,
    MESSAGE_EXCERPT_CHARS,
    Account,
    CreatedProject,
    MagicHourClient,
    ProjectStatus,
    parse_retry_after,
)
from batcher.errors import (
    ApiError,
    AuthError,
    BatcherError,
    BodyTooLargeError,
    ConfigError,
    ConnectError,
    DownloadExpiredError,
    DownloadTooLargeError,
    MalformedResponseError,
    OutputError,
    ResponseLostError,
)
from batcher.settings import ApiConfig

pytestmark = pytest.mark.anyio

KEY = "mhk_live_0123456789abcdefSECRET"
BASE = "https://api.test"
BODY = {"image_count": 1, "style": {"prompt": "a red bicycle"}, "name": "b k"}

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorder:
    """A MockTransport handler that answers from a function and keeps every request."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)


def client_for(
    answer: Handler, key: str | None = KEY, **options: Any
) -> tuple[MagicHourClient, Recorder]:
    recorder = Recorder(answer)
    client = MagicHourClient(
        ApiConfig(base_url=BASE, api_key=key), transport=httpx.MockTransport(recorder), **options
    )
    return client, recorder


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def json_answer(status: int, data: Any, headers: dict[str, str] | None = None) -> Handler:
    return lambda request: httpx.Response(status, json=data, headers=headers)


# --------------------------------------------------------------------------- happy paths


async def test_create_sends_json_with_bearer_and_parses_leniently() -> None:
    client, rec = client_for(
        json_answer(200, {"id": "p1", "credits_charged": 5.0, "frame_cost": 5, "new": [1]})
    )
    async with client:
        created = await client.create_image(BODY)
    assert created == CreatedProject(project_id="p1", credits_charged=5)
    request = rec.requests[0]
    assert request.method == "POST"
    assert str(request.url) == BASE + CREATE_PATH
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == BODY
    assert request.extensions["timeout"]["read"] == client._timeouts.create_read


async def test_get_project_parses_every_field_and_ignores_unknown_ones() -> None:
    data = {
        "id": "p1",
        "status": "complete",
        "credits_charged": 10,
        "downloads": [
            {"url": "https://cdn.test/a.png?sig=1", "expires_at": "2026-02-01T10:00:00Z"},
            {"url": "https://cdn.test/b.png", "expires_at": None},
            {"expires_at": "2026-02-01T10:00:00Z"},  # no url: skipped
            "junk",
        ],
        "error": None,
        "image_count": 2,
        "name": "batch key",
        "created_at": "2026-01-31T10:00:00.123+00:00",
        "enabled": True,
        "type": "SOMETHING_NEW",
        "total_frame_cost": 10,
        "unknown": {"x": 1},
    }
    client, rec = client_for(json_answer(200, data))
    async with client:
        status = await client.get_project("p/1 ?")
    assert str(rec.requests[0].url) == BASE + "/v1/image-projects/p%2F1%20%3F"
    assert status.is_finished
    assert status.credits_charged == 10
    assert [d.url for d in status.downloads] == [
        "https://cdn.test/a.png?sig=1",
        "https://cdn.test/b.png",
    ]
    assert status.downloads[0].expires_at == datetime(2026, 2, 1, 10, tzinfo=UTC)
    assert status.downloads[1].expires_at is None
    assert status.created_at is not None and status.created_at.tzinfo is not None
    assert (status.image_count, status.name, status.enabled) == (2, "batch key", True)
    assert (status.error_code, status.error_message) == (None, None)


@pytest.mark.parametrize(
    ("status", "finished"),
    [
        ("draft", False),
        ("queued", False),
        ("rendering", False),
        ("complete", True),
        ("error", True),
        ("canceled", True),
        ("Something-New", False),
    ],
)
async def test_is_finished(status: str, finished: bool) -> None:
    client, _ = client_for(json_answer(200, {"id": "p", "status": status}))
    async with client:
        project = await client.get_project("p")
    assert project.is_finished is finished


async def test_failed_render_carries_error_and_refunded_credits() -> None:
    data = {
        "id": "p",
        "status": "error",
        "credits_charged": 0,
        "downloads": [],
        "error": {"code": "render_failed", "message": "the model fell over"},
    }
    client, _ = client_for(json_answer(200, data))
    async with client:
        project = await client.get_project("p")
    assert project == ProjectStatus(
        project_id="p",
        status="error",
        credits_charged=0,
        downloads=(),
        error_code="render_failed",
        error_message="the model fell over",
        image_count=None,
        name=None,
        enabled=None,
        created_at=None,
    )


async def test_delete_and_account() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(
            200,
            json={
                "id": "acc",
                "email": "a@b.c",
                "credits": 1200,
                "tier": "creator",
                "subscription": {"plan": "x"},
            },
        )

    client, rec = client_for(answer)
    async with client:
        await client.delete_project("p1")
        account = await client.get_account()
    assert rec.requests[0].method == "DELETE"
    assert str(rec.requests[0].url) == BASE + "/v1/image-projects/p1"
    assert str(rec.requests[1].url) == BASE + "/v1/account"
    assert account == Account("acc", "a@b.c", 1200, "creator", {"plan": "x"})


async def test_missing_key_sends_no_authorization() -> None:
    client, rec = client_for(json_answer(200, {"id": "p", "credits_charged": 1}), key=None)
    async with client:
        await client.create_image(BODY)
    assert "authorization" not in rec.requests[0].headers


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "body", "klass", "message"),
    [
        (400, {"message": "image_count must be 1"}, ApiError, "image_count must be 1"),
        (401, {"message": "bad key"}, AuthError, "bad key"),
        (402, {"error": "not enough credits"}, ApiError, "not enough credits"),
        (403, {"detail": "model not on your plan"}, ApiError, "model not on your plan"),
        (404, {"error": {"code": "nf", "message": "no such project"}}, ApiError, "no such project"),
        (
            422,
            {"detail": [{"loc": ["body", "style", "prompt"], "msg": "field required"}]},
            ApiError,
            "body.style.prompt: field required",
        ),
        (422, {"detail": {"message": "bad resolution"}}, ApiError, "bad resolution"),
        (429, {"message": ""}, ApiError, "Too Many Requests"),
        (500, b"<html><body>Internal\n  Server  Error</body></html>", ApiError, "<html>"),
        (503, b"", ApiError, "Service Unavailable"),
        (502, {"code": "upstream"}, ApiError, '{"code":"upstream"}'),
    ],
)
async def test_status_maps_to_error_class_and_message(
    status: int, body: Any, klass: type[ApiError], message: str
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.Response(status, content=body)
        return httpx.Response(status, json=body)

    client, _ = client_for(answer)
    async with client:
        calls = (
            lambda: client.create_image(BODY),
            lambda: client.get_project("p"),
            lambda: client.get_account(),
        )
        for call in calls:
            with pytest.raises(ApiError) as caught:
                await call()
            assert type(caught.value) is klass
            assert caught.value.status == status
            assert message in caught.value.message
            assert f"HTTP {status}" in str(caught.value)


async def test_non_json_excerpt_is_short_and_single_line() -> None:
    body = ("oops   \n" * 500).encode()
    client, _ = client_for(lambda r: httpx.Response(500, content=body))
    async with client:
        with pytest.raises(ApiError) as caught:
            await client.get_account()
    assert len(caught.value.message) <= MESSAGE_EXCERPT_CHARS
    assert "\n" not in caught.value.message
    assert caught.value.message.startswith("oops oops")


async def test_retry_after_is_read_from_error_answers() -> None:
    client, _ = client_for(json_answer(429, {"message": "slow down"}, {"Retry-After": "2.5"}))
    async with client:
        with pytest.raises(ApiError) as caught:
            await client.create_image(BODY)
    assert caught.value.retry_after == 2.5


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("-4", 0.0),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(value, now=lambda: now) == expected


@pytest.mark.parametrize(
    "body",
    [
        {"credits_charged": 5},
        {"id": "", "credits_charged": 5},
        {"id": None},
        ["p1"],
        "p1",
    ],
)
async def test_create_success_without_usable_id_is_in_doubt(body: Any) -> None:
    client, _ = client_for(json_answer(200, body))
    async with client:
        with pytest.raises(MalformedResponseError) as caught:
            await client.create_image(BODY)
    assert isinstance(caught.value, ResponseLostError)  # never re-sent blindly
    assert caught.value.project_id is None


async def test_create_success_that_is_not_json_is_in_doubt() -> None:
    client, _ = client_for(lambda r: httpx.Response(200, content=b"<html>ok</html>"))
    async with client:
        with pytest.raises(ResponseLostError, match="may have been charged"):
            await client.create_image(BODY)


@pytest.mark.parametrize("credits", [None, "5", 5.5, True, -5, 10**18, 1e18, float("nan")])
async def test_create_without_usable_credits_keeps_the_id(credits: Any) -> None:
    body = json.dumps({"id": "p9", "credits_charged": credits}).encode()
    client, _ = client_for(lambda r: httpx.Response(200, content=body))
    async with client:
        created = await client.create_image(BODY)
    assert created.project_id == "p9"
    assert created.credits_charged is None
    assert created.charge_problem


@pytest.mark.parametrize("status", [204, 301, 302, 304, 101])
async def test_create_answered_neither_success_nor_error_is_in_doubt(status: int) -> None:
    client, _ = client_for(lambda r: httpx.Response(status, headers={"location": "/login"}))
    async with client:
        with pytest.raises(ResponseLostError, match="may have been charged"):
            await client.create_image(BODY)


@pytest.mark.parametrize("announced", [True, False])
async def test_api_bodies_over_the_cap_are_refused_unread(announced: bool) -> None:
    sent: list[int] = []

    async def endless() -> Any:
        yield b'{"id": "p1", "credits_charged": 5, "pad": "'
        for _ in range(10_000):
            sent.append(1)
            yield b"x" * 1024

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"content-length": str(50 * 1024**2)} if announced else {}
        return httpx.Response(200, headers=headers, content=endless())

    client, _ = client_for(answer, max_body_bytes=64 * 1024)
    async with client:
        with pytest.raises(BodyTooLargeError, match="max-body-bytes"):
            await client.create_image(BODY)
        with pytest.raises(ResponseLostError):
            await client.get_project("p1")
    assert len(sent) <= 2 * 70  # read no further than the cap


async def test_key_scrubbed_before_shortening_any_case_and_in_part() -> None:
    key = "mhk_live_" + "a1b2c3d4e5f6g7h8i9j0"
    messages = [
        "x" * 190 + key,  # straddles the 200-character cut
        f"bad key {key.upper()}",
        f"bad key prefix {key[:12]}...",
    ]
    for message in messages:
        client, _ = client_for(json_answer(400, {"message": message}), key=key)
        async with client:
            with pytest.raises(ApiError) as caught:
                await client.create_image(BODY)
        text = str(caught.value).lower()
        for start in range(len(key) - 8 + 1):
            assert key[start : start + 8].lower() not in text, message
        assert "[redacted]" in text


async def test_poll_without_status_is_malformed() -> None:
    client, _ = client_for(json_answer(200, {"id": "p"}))
    async with client:
        with pytest.raises(MalformedResponseError):
            await client.get_project("p")


@pytest.mark.parametrize(
    ("raised", "translated"),
    [
        (httpx.ConnectError("refused"), ConnectError),
        (httpx.ConnectTimeout("slow handshake"), ConnectError),
        (httpx.PoolTimeout("pool full"), ConnectError),
        (httpx.UnsupportedProtocol("gopher"), ConnectError),
        (httpx.ReadTimeout("read timed out"), ResponseLostError),
        (httpx.WriteTimeout("write timed out"), ResponseLostError),
        (httpx.ReadError("reset by peer"), ResponseLostError),
        (httpx.WriteError("broken pipe"), ResponseLostError),
        (httpx.RemoteProtocolError("Server disconnected"), ResponseLostError),
        (httpx.LocalProtocolError("bad"), ResponseLostError),
        (httpx.DecodingError("bad gzip"), ResponseLostError),
    ],
)
async def test_httpx_errors_are_translated_by_whether_the_request_went_out(
    raised: Exception, translated: type[Exception]
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise raised

    client, _ = client_for(answer)
    async with client:
        with pytest.raises(BatcherError) as caught:
            await client.create_image(BODY)
    assert type(caught.value) is translated
    assert caught.value.__cause__ is None  # no httpx object (holding the request) rides along
    assert not isinstance(caught.value, httpx.HTTPError)


@pytest.mark.parametrize(
    "url", ["api.magichour.ai", "ftp://x", "http://", "https://[::1", "http://:80"]
)
def test_bad_base_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        MagicHourClient(ApiConfig(base_url=url, api_key=KEY))


@pytest.mark.parametrize("key", ["with space", "tab\tkey", "new\nline", "ключ"])
def test_key_that_cannot_be_a_header_is_a_config_error_without_the_key(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        MagicHourClient(ApiConfig(base_url=BASE, api_key=key))
    assert key not in str(caught.value)


# --------------------------------------------------------------------------- secrets


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "batcher"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield caplog
    for name in ("httpx", "httpcore", "batcher"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def _record_text(record: logging.LogRecord) -> str:
    return record.getMessage() + " " + repr(record.__dict__)


async def test_key_never_appears_in_errors_reprs_or_logs(
    all_logs: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from batcher.client import retry

    answers = iter(
        [
            httpx.Response(401, json={"message": f"invalid key {KEY}"}),
            httpx.Response(500, text=f"trace: Authorization: Bearer {KEY}"),
            httpx.Response(429, json={"detail": [{"msg": KEY}]}, headers={"Retry-After": "1"}),
            httpx.Response(200, json={"id": "p", "credits_charged": 1}),
        ]
    )

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.test":
            raise httpx.ReadError(f"echo {KEY}")
        return next(answers)

    client, _ = client_for(answer)
    seen: list[BaseException] = []
    async with client:
        with retry.instant():
            for _ in range(3):
                try:
                    async for attempt in retry.create_retrying(attempts=2):
                        with attempt:
                            await client.create_image(BODY)
                except BatcherError as exc:
                    seen.append(exc)
            with pytest.raises(ResponseLostError) as lost:
                await client.download("https://cdn.test/x.png?sig=abc", tmp_path / "x.png")
            seen.append(lost.value)
    assert [type(e) for e in seen[:1]] == [AuthError]
    assert len(seen) >= 3
    for exc in seen:
        for text in (str(exc), repr(exc), repr(exc.args), getattr(exc, "message", "")):
            assert KEY not in text
    assert "[redacted]" in str(seen[0])
    for text in (repr(client), repr(ApiConfig(base_url=BASE, api_key=KEY))):
        assert KEY not in text
    assert all_logs.records, "expected some log records"
    for record in all_logs.records:
        assert KEY not in _record_text(record)


# --------------------------------------------------------------------------- downloads


def _image_answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"\x89PNG" + b"x" * 300_000)


async def test_download_writes_atomically_without_authorization(tmp_path: Path) -> None:
    client, rec = client_for(_image_answer)
    dest = tmp_path / "deep" / "folder" / "img.png"
    async with client:
        written = await client.download(BASE + "/files/img.png?sig=1", dest)
    assert written == 300_004
    assert dest.read_bytes()[:4] == b"\x89PNG"
    assert names(dest.parent) == ["img.png"]  # no temp left
    request = rec.requests[0]
    # Even on the API's own host, a signed URL is fetched without the key.
    assert "authorization" not in request.headers
    assert request.url.params["sig"] == "1"


async def test_download_follows_redirects_without_authorization(tmp_path: Path) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "api.test":
            return httpx.Response(302, headers={"Location": "https://cdn.test/real.png"})
        return httpx.Response(200, content=b"data")

    client, rec = client_for(answer)
    async with client:
        assert await client.download(BASE + "/redirect", tmp_path / "a.png") == 4
    assert [r.url.host for r in rec.requests] == ["api.test", "cdn.test"]
    assert all("authorization" not in r.headers for r in rec.requests)


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_expired_download_is_distinct(status: int, tmp_path: Path) -> None:
    client, _ = client_for(
        lambda r: httpx.Response(status, content=b"<Error>Request has expired</Error>")
    )
    async with client:
        with pytest.raises(DownloadExpiredError) as caught:
            await client.download("https://cdn.test/a.png", tmp_path / "a.png")
    assert caught.value.status == status
    assert "expired" in caught.value.message
    assert names(tmp_path) == []


async def test_other_download_errors_are_api_errors(tmp_path: Path) -> None:
    client, _ = client_for(lambda r: httpx.Response(503, headers={"Retry-After": "7"}))
    async with client:
        with pytest.raises(ApiError) as caught:
            await client.download("https://cdn.test/a.png", tmp_path / "a.png")
    assert type(caught.value) is ApiError
    assert (caught.value.status, caught.value.retry_after) == (503, 7.0)


class _BreakingStream(httpx.AsyncByteStream):
    async def __aiter__(self) -> Any:
        yield b"first part of the image"
        raise httpx.ReadError("connection reset")


async def test_failed_download_leaves_no_partial_file_and_keeps_the_old_one(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "img.png"
    dest.write_bytes(b"previous good image")
    client, _ = client_for(lambda r: httpx.Response(200, stream=_BreakingStream()))
    async with client:
        with pytest.raises(ResponseLostError):
            await client.download("https://cdn.test/a.png", dest)
    assert names(tmp_path) == ["img.png"]
    assert dest.read_bytes() == b"previous good image"


@pytest.mark.parametrize("url", ["not a url at all", "ftp://cdn.test/a.png", "http://"])
async def test_unusable_download_url(url: str, tmp_path: Path) -> None:
    client, rec = client_for(_image_answer)
    async with client:
        with pytest.raises(ConnectError):
            await client.download(url, tmp_path / "a.png")
    assert rec.requests == []
    assert names(tmp_path) == []


class _EndlessStream(httpx.AsyncByteStream):
    """A body that never ends (no Content-Length): only counting stops it."""

    def __init__(self) -> None:
        self.sent = 0

    async def __aiter__(self) -> Any:
        block = b"\x89PNG" + bytes(64 * 1024 - 4)
        while True:
            self.sent += len(block)
            yield block


async def test_a_download_over_the_cap_is_stopped_there(tmp_path: Path) -> None:
    stream = _EndlessStream()
    client = MagicHourClient(
        ApiConfig(base_url=BASE, api_key=KEY),
        transport=httpx.MockTransport(lambda r: httpx.Response(200, stream=stream)),
        max_download_bytes=1_000_000,
    )
    dest = tmp_path / "img.png"
    async with client:
        with pytest.raises(DownloadTooLargeError) as caught:
            await client.download("https://cdn.test/a.png?sig=secret", dest)
    assert caught.value.limit == 1_000_000
    assert "1,000,000-byte cap" in str(caught.value) and "secret" not in str(caught.value)
    assert stream.sent < 1_000_000 + 2 * 256 * 1024  # read no further than the cap
    assert names(tmp_path) == []  # nothing of it kept


async def test_a_download_announced_over_the_cap_is_not_read(tmp_path: Path) -> None:
    stream = _EndlessStream()

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": str(10**12)}, stream=stream)

    client = MagicHourClient(
        ApiConfig(base_url=BASE, api_key=KEY),
        transport=httpx.MockTransport(answer),
        max_download_bytes=1_000_000,
    )
    async with client:
        with pytest.raises(DownloadTooLargeError):
            await client.download("https://cdn.test/a.png", tmp_path / "img.png")
    assert stream.sent == 0
    assert names(tmp_path) == []


async def test_a_download_of_exactly_the_cap_is_kept(tmp_path: Path) -> None:
    client = MagicHourClient(
        ApiConfig(base_url=BASE, api_key=KEY),
        transport=httpx.MockTransport(_image_answer),
        max_download_bytes=300_004,
    )
    async with client:
        assert await client.download("https://cdn.test/a.png", tmp_path / "a.png") == 300_004
    with pytest.raises(ConfigError):
        MagicHourClient(ApiConfig(base_url=BASE), max_download_bytes=0)


async def test_downloads_get_the_mode_the_umask_gives(tmp_path: Path) -> None:
    client, _ = client_for(_image_answer)
    previous = os.umask(0o022)
    try:
        async with client:
            await client.download("https://cdn.test/a.png", tmp_path / "a.png")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o644


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Files this process writes cannot grow past `limit` bytes: a write beyond it
    fails with a real OSError (EFBIG), as a full disk makes one fail (ENOSPC)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


async def test_a_write_that_fails_mid_download_is_an_output_error(tmp_path: Path) -> None:
    dest = tmp_path / "img.png"
    dest.write_bytes(b"previous good image")
    client, _ = client_for(_image_answer)  # 300 kB
    async with client:
        with file_size_limit(100_000), pytest.raises(OutputError) as caught:
            await client.download("https://cdn.test/a.png", dest)
    assert caught.value.path == str(dest)
    assert str(caught.value).startswith(f"cannot write {dest}: ")
    assert "\n" not in str(caught.value)
    assert names(tmp_path) == ["img.png"]  # no partial file left
    assert dest.read_bytes() == b"previous good image"


async def test_a_folder_that_cannot_be_made_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file where the folder should be")
    client, rec = client_for(_image_answer)
    dest = tmp_path / "out" / "img.png"
    async with client:
        with pytest.raises(OutputError) as caught:
            await client.download("https://cdn.test/a.png", dest)
    assert caught.value.path == str(dest)
    assert rec.requests == []  # found before fetching anything
