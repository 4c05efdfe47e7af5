"""The retry policy: pure predicates, waits, attempt counts with the instant switch."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from batcher.client import retry
from batcher.errors import (
    ApiError,
    AuthError,
    ConnectError,
    DownloadExpiredError,
    LedgerError,
    MalformedResponseError,
    ResponseLostError,
    TransportError,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def instant() -> Iterator[None]:
    with retry.instant():
        yield


CASES: list[tuple[BaseException, bool, bool]] = [
    # exception,                                 create retried, read retried
    (ConnectError("refused"), True, True),
    (ResponseLostError("timed out after sending"), False, True),
    (MalformedResponseError("200 without id"), False, True),
    (TransportError("generic"), False, True),
    (ApiError(429, "slow down"), True, True),
    (ApiError(429, "slow down", retry_after=3), True, True),
    (ApiError(500, "oops"), True, True),
    (ApiError(502, "bad gateway"), True, True),
    (ApiError(503, "unavailable"), True, True),
    (ApiError(599, "weird"), True, True),
    (ApiError(400, "bad request"), False, False),
    (AuthError(401, "bad key"), False, False),
    (ApiError(402, "no credits"), False, False),
    (ApiError(403, "not on plan"), False, False),
    (ApiError(404, "unknown id"), False, False),
    (ApiError(409, "conflict"), False, False),
    (ApiError(422, "invalid"), False, False),
    (DownloadExpiredError(410, "expired"), False, False),  # re-GET the project instead
    (LedgerError("db"), False, False),
    (ValueError("bug"), False, False),
]


@pytest.mark.parametrize(("exc", "create", "read"), CASES, ids=lambda v: repr(v)[:40])
def test_predicates(exc: BaseException, create: bool, read: bool) -> None:
    assert retry.create_is_retryable(exc) is create
    assert retry.read_is_retryable(exc) is read


def test_waits_honour_retry_after_capped() -> None:
    assert retry.waiting()
    assert retry.wait_seconds(1, ApiError(429, "x", retry_after=7.5)) == 7.5
    assert retry.wait_seconds(1, ApiError(429, "x", retry_after=0)) == 0.0
    assert retry.wait_seconds(9, ApiError(503, "x", retry_after=10_000)) == retry.RETRY_AFTER_MAX
    assert retry.wait_seconds(2, ApiError(503, "x", retry_after=2)) == 2


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 20, 100])
def test_backoff_is_full_jitter_under_an_exponential_cap(attempt: int) -> None:
    cap = min(retry.BACKOFF_MAX, retry.BACKOFF_INITIAL * 2 ** (attempt - 1))
    waits = [retry.wait_seconds(attempt, ConnectError("x")) for _ in range(200)]
    assert all(0 <= w <= cap for w in waits)
    assert max(waits) > cap / 2  # spread out, not a constant
    assert len(set(waits)) > 100


def test_instant_switch_removes_every_wait() -> None:
    with retry.instant():
        assert not retry.waiting()
        assert retry.wait_seconds(5, ApiError(429, "x", retry_after=60)) == 0
        assert retry.wait_seconds(3, ConnectError("x")) == 0
    assert retry.waiting()
    retry.set_waiting(False)
    try:
        assert retry.wait_seconds(5, ConnectError("x")) == 0
    finally:
        retry.set_waiting(True)


def test_environment_switch_is_read_at_import() -> None:
    code = "from batcher.client import retry; print(retry.waiting())"
    env = {**os.environ, retry.INSTANT_ENV: "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


class Flaky:
    """Fails with the given exceptions in turn, then returns "ok"."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


async def run_create(call: Flaky, attempts: int = retry.CREATE_ATTEMPTS) -> str:
    async for attempt in retry.create_retrying(attempts=attempts):
        with attempt:
            return await call()
    raise AssertionError("unreachable")  # pragma: no cover


async def run_read(call: Flaky, attempts: int = retry.READ_ATTEMPTS) -> str:
    async for attempt in retry.read_retrying(attempts=attempts):
        with attempt:
            return await call()
    raise AssertionError("unreachable")  # pragma: no cover


@pytest.mark.usefixtures("instant")
async def test_create_retries_only_what_created_nothing() -> None:
    call = Flaky(ConnectError("x"), ApiError(503, "x"), ApiError(429, "x", retry_after=30))
    assert await run_create(call) == "ok"
    assert call.calls == 4

    lost = Flaky(ApiError(500, "x"), ResponseLostError("maybe sent"))
    with pytest.raises(ResponseLostError):
        await run_create(lost)
    assert lost.calls == 2  # never re-sent after a lost answer

    refused = Flaky(ApiError(422, "invalid"))
    with pytest.raises(ApiError):
        await run_create(refused)
    assert refused.calls == 1


@pytest.mark.usefixtures("instant")
async def test_create_gives_up_after_its_attempts_with_the_last_error() -> None:
    call = Flaky(*[ApiError(503, f"try {n}") for n in range(10)])
    with pytest.raises(ApiError, match="try 2"):
        await run_create(call, attempts=3)
    assert call.calls == 3


@pytest.mark.usefixtures("instant")
async def test_reads_retry_transport_errors_and_stop_at_other_4xx() -> None:
    call = Flaky(ResponseLostError("x"), ConnectError("x"), ApiError(502, "x"))
    assert await run_read(call) == "ok"
    assert call.calls == 4

    gone = Flaky(ResponseLostError("x"), ApiError(404, "unknown"))
    with pytest.raises(ApiError, match="unknown"):
        await run_read(gone)
    assert gone.calls == 2

    always = Flaky(*[ResponseLostError("x")] * 20)
    with pytest.raises(ResponseLostError):
        await run_read(always)
    assert always.calls == retry.READ_ATTEMPTS


@pytest.mark.usefixtures("instant")
async def test_retries_are_logged_with_stable_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="batcher.client.retry")
    await run_create(Flaky(ApiError(429, "x", retry_after=4), ConnectError("x")))
    records = [r for r in caplog.records if r.name == "batcher.client.retry"]
    assert [r.__dict__["event"] for r in records] == ["retry.create", "retry.create"]
    assert [r.__dict__["attempt"] for r in records] == [1, 2]
    assert [r.__dict__["status"] for r in records] == [429, None]
    assert [r.__dict__["error_type"] for r in records] == ["ApiError", "ConnectError"]
    assert all(r.__dict__["wait"] == 0 for r in records)


def retry_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "batcher.client.retry"]


async def test_a_create_honours_retry_after_on_a_5xx(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="batcher.client.retry")
    assert retry.waiting()
    call = Flaky(ApiError(503, "x", retry_after=0.01))
    assert await run_create(call) == "ok"
    [record] = retry_records(caplog)
    assert record.__dict__["wait"] == 0.01


async def test_paced_429s_wait_nothing_and_count_apart(caplog: pytest.LogCaptureFixture) -> None:
    # With waits on: a paced caller's limiter pauses for a 429, the policy adds nothing.
    caplog.set_level(logging.DEBUG, logger="batcher.client.retry")
    assert retry.waiting()

    async def run(call: Flaky) -> str:
        async for attempt in retry.create_retrying(attempts=2, throttled_attempts=4, paced=True):
            with attempt:
                return await call()
        raise AssertionError("unreachable")  # pragma: no cover

    throttles = [ApiError(429, "slow down") for _ in range(3)]
    call = Flaky(*throttles, ApiError(503, "x", retry_after=0))
    assert await run(call) == "ok"
    assert call.calls == 5  # 3 429s and a 5xx: within both allowances
    records = retry_records(caplog)
    assert [r.__dict__["wait"] for r in records] == [0, 0, 0, 0]
    assert [r.levelno for r in records] == [logging.DEBUG] * 3 + [logging.INFO]

    always = Flaky(*[ApiError(429, "slow down") for _ in range(10)])
    with pytest.raises(ApiError):
        await run(always)
    assert always.calls == 4  # the 429 allowance

    failing = Flaky(ApiError(429, "x"), ApiError(500, "x", retry_after=0), ApiError(500, "x"))
    with pytest.raises(ApiError, match="500"):
        await run(failing)
    assert failing.calls == 3  # two 5xx: the other allowance, whatever the 429s


@pytest.mark.usefixtures("instant")
async def test_without_pacing_a_429_is_one_more_failure() -> None:
    call = Flaky(*[ApiError(429, "slow down") for _ in range(10)])
    with pytest.raises(ApiError):
        await run_create(call, attempts=3)
    assert call.calls == 3


@pytest.mark.usefixtures("instant")
async def test_create_and_read_calls_run_the_policy(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="batcher.client.retry")
    # A first try that works: no retry, no log.
    once = Flaky()
    assert await retry.create(once) == "ok"
    assert once.calls == 1
    # The first try's failure is the policy's attempt 1, logged as any other.
    twice = Flaky(ConnectError("x"), ApiError(502, "x"))
    assert await retry.create(twice, about={"key": "k1"}) == "ok"
    assert twice.calls == 3
    records = retry_records(caplog)
    assert [r.__dict__["attempt"] for r in records] == [1, 2]
    assert {r.__dict__["key"] for r in records} == {"k1"}
    assert {r.__dict__["event"] for r in records} == {"retry.create"}
    # What the policy does not retry is raised at once.
    lost = Flaky(ResponseLostError("maybe sent"))
    with pytest.raises(ResponseLostError):
        await retry.create(lost)
    assert lost.calls == 1
    # Reads retry what creates must not, up to their attempts.
    read = Flaky(ResponseLostError("x"), ApiError(503, "x"))
    assert await retry.read(read, about={"project_id": "p1"}) == "ok"
    assert read.calls == 3
    assert [r.__dict__["event"] for r in retry_records(caplog)[2:]] == ["retry.read"] * 2
    always = Flaky(*[ApiError(500, "x") for _ in range(20)])
    with pytest.raises(ApiError):
        await retry.read(always)
    assert always.calls == retry.READ_ATTEMPTS
