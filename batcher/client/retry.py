"""The retry policy, declared once: what is retried, how long we wait, how often.

*Whether*: two pure predicates.

- A create is billable and has no idempotency key, so it is retried only when
  it surely created nothing: the connection was never made (ConnectError) or
  the server refused it with 429 or 5xx. A lost answer (ResponseLostError) is
  never re-sent blindly: the item is in doubt and the user decides.
- A read (a poll, a download, the account, reconcile's polls) changes
  nothing, so any transport failure, 429 and 5xx are retried. Other 4xx are
  answers, not accidents.

*How long*: a server's Retry-After (capped at RETRY_AFTER_MAX), else an
exponential backoff with full jitter, so many workers that failed together do
not retry together.

*Paced* callers (the runner and reconcile) send every request through an
AdaptiveLimiter (batcher.client.limits), which pauses every request after a 429,
for its Retry-After or a backoff of its own, and lowers the concurrency. For
them a 429 is the server setting the pace, not an accident: the policy adds
no wait of its own after it, and 429s have an allowance of their own
(THROTTLED_ATTEMPTS) apart from the other failures (CREATE_ATTEMPTS,
READ_ATTEMPTS). For a caller without a limiter a 429 is one more failure.

*How often*, and the log: each retry logs one record, event `retry.create`
or `retry.read`, with `attempt` (1-based, the attempt that failed), `wait`
(seconds), `status`, `error_type` and the caller's `about` fields (the item
key, the project id); at INFO, or DEBUG for a paced 429 (its limiter logs the
cut once per window). When the attempts run out, the last error is raised as
it is: the caller decides what it means.

Use `await create(call, paced=...)` and `await read(call, ...)`, where `call`
makes one try (`lambda: client.get_project(id)`), or make the first try
yourself and hand its retryable failure to `create_again(exc, call, ...)`; the
tenacity objects behind them are `create_retrying()` and `read_retrying()`.

*Outages*: a paced caller does not spend a create's attempts on an API it
cannot reach. A ConnectError pauses every request of the run
(batcher.run.outage); one request at a time probes, after `probe_wait()`
(the same full-jitter backoff, capped at PROBE_MAX), and the first answer
resumes them all. A poll that failed through its attempts is looked at
again after `poll_again()`, which grows with its consecutive failures.

Tests make every wait zero with `instant()` (or `set_waiting(False)`, or
BATCHER_RETRY_INSTANT=1 in the environment, read once at import), so the
right number of attempts happens without sleeping.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Final, TypeVar

import anyio
import tenacity

from batcher.errors import ApiError, ConnectError, ResponseLostError, TransportError

log = logging.getLogger(__name__)

T = TypeVar("T")

INSTANT_ENV: Final = "BATCHER_RETRY_INSTANT"

CREATE_ATTEMPTS: Final = 6  # the first try and 5 retries
READ_ATTEMPTS: Final = 6
# A paced caller's 429s: the limiter slows every request down meanwhile, so many
# are allowed before one call gives up.
THROTTLED_ATTEMPTS: Final = 30
BACKOFF_INITIAL: Final = 0.5  # seconds: the cap of the first retry's random wait
BACKOFF_MAX: Final = 30.0  # the exponential cap stops growing here
RETRY_AFTER_MAX: Final = 120.0  # a server asking for longer gets this much, then we retry
PROBE_MAX: Final = 15.0  # an outage is probed at least this often, so it ends soon after the API
# Even with waits off (tests), probes of an unreachable API never spin.
PROBE_FLOOR: Final = 0.02
POLL_AGAIN_INITIAL: Final = 5.0  # a poll that failed through its attempts: look again after this
POLL_AGAIN_MAX: Final = 120.0  # ...doubling with each consecutive failure, up to this

# Statuses that mean "refused for now, nothing done": too many requests, and
# every 5xx (the API documents that a 5xx create created nothing).
THROTTLED: Final = 429


def _status_is_transient(status: int) -> bool:
    return status == THROTTLED or 500 <= status <= 599


def is_throttle(exc: BaseException | None) -> bool:
    """A 429: the server asks us to slow down."""
    return isinstance(exc, ApiError) and exc.status == THROTTLED


def create_is_retryable(exc: BaseException) -> bool:
    """True only when a create surely created (and charged) nothing."""
    if isinstance(exc, ResponseLostError):
        return False  # maybe processed: re-sending could pay twice
    if isinstance(exc, ConnectError):
        return True
    if isinstance(exc, ApiError):
        return _status_is_transient(exc.status)
    return False


def read_is_retryable(exc: BaseException) -> bool:
    """True when a poll or a download is worth trying again: it changes nothing."""
    if isinstance(exc, TransportError):
        return True
    if isinstance(exc, ApiError):
        return _status_is_transient(exc.status)
    return False


# --------------------------------------------------------------------------- waiting

_waiting = os.environ.get(INSTANT_ENV, "").strip().lower() not in ("1", "true", "yes", "on")
_random = random.Random()


def set_waiting(enabled: bool) -> None:
    """Turn every retry wait on (the default) or off (tests)."""
    global _waiting
    _waiting = enabled


def waiting() -> bool:
    """Whether retry waits are on."""
    return _waiting


@contextmanager
def instant() -> Iterator[None]:
    """Within this block, retries happen without waiting."""
    before = _waiting
    set_waiting(False)
    try:
        yield
    finally:
        set_waiting(before)


def backoff(attempt: int) -> float:
    """Full-jitter exponential backoff after failed attempt number `attempt` (1-based)."""
    ceiling = min(BACKOFF_MAX, BACKOFF_INITIAL * 2.0 ** max(0, attempt - 1))
    return _random.uniform(0.0, ceiling)


def probe_wait(attempt: int) -> float:
    """How long an outage's probe number `attempt` (1-based) waits before it goes."""
    if not _waiting:
        return PROBE_FLOOR
    ceiling = min(PROBE_MAX, BACKOFF_INITIAL * 2.0 ** max(0, attempt - 1))
    return max(PROBE_FLOOR, _random.uniform(0.0, ceiling))


def poll_again(failures: int) -> float:
    """When to poll a render again after `failures` (1-based) polls in a row that
    failed through all their attempts: a slow or failing API is asked less often.
    A schedule, not a retry wait: the test switch leaves it alone."""
    return min(POLL_AGAIN_MAX, POLL_AGAIN_INITIAL * 2.0 ** max(0, failures - 1))


def wait_seconds(attempt: int, exc: BaseException | None) -> float:
    """How long to wait after failed attempt `attempt`: Retry-After if given, else backoff."""
    if not _waiting:
        return 0.0
    retry_after = exc.retry_after if isinstance(exc, ApiError) else None
    if retry_after is not None:
        return min(max(0.0, retry_after), RETRY_AFTER_MAX)
    return backoff(attempt)


# --------------------------------------------------------------------------- tenacity


def _failure(retry_state: tenacity.RetryCallState) -> BaseException | None:
    outcome = retry_state.outcome
    return outcome.exception() if outcome is not None and outcome.failed else None


class _Tries:
    """The failed attempts of one call, by kind; its stop and its wait.

    One per call: `create_retrying()` and `read_retrying()` make a new one each
    time. tenacity calls `after` for every failure it will retry, before it
    asks the wait and the stop about it.
    """

    def __init__(self, attempts: int, throttled_attempts: int, paced: bool) -> None:
        self._attempts = attempts
        self._throttled_attempts = throttled_attempts
        self._paced = paced
        self._failures = 0
        self._throttles = 0

    def _paced_throttle(self, exc: BaseException | None) -> bool:
        return self._paced and is_throttle(exc)

    def after(self, retry_state: tenacity.RetryCallState) -> None:
        if self._paced_throttle(_failure(retry_state)):
            self._throttles += 1
        else:
            self._failures += 1

    def stop(self, retry_state: tenacity.RetryCallState) -> bool:
        return self._failures >= self._attempts or self._throttles >= self._throttled_attempts

    def wait(self, retry_state: tenacity.RetryCallState) -> float:
        exc = _failure(retry_state)
        if self._paced_throttle(exc):
            return 0.0  # the caller's limiter pauses every request for it
        return wait_seconds(max(1, self._failures), exc)


def _log_retry(
    kind: str, paced: bool, about: Mapping[str, object] | None
) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        exc = _failure(retry_state)
        wait = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
        # A paced 429 is news once per limiter window (the limiter logs its cut at
        # INFO); every call it sets back is detail.
        level = logging.DEBUG if paced and is_throttle(exc) else logging.INFO
        # Our exceptions' messages never hold the key (batcher.client.magic_hour scrubs them).
        log.log(
            level,
            "retrying %s after %s",
            kind,
            type(exc).__name__ if exc is not None else "no exception",
            extra={
                **(about or {}),
                "event": f"retry.{kind}",
                "attempt": retry_state.attempt_number,
                "wait": round(wait, 3),
                "status": exc.status if isinstance(exc, ApiError) else None,
                "error_type": type(exc).__name__ if exc is not None else None,
            },
        )

    return before_sleep


async def _sleep(seconds: float) -> None:
    # anyio's sleep, not asyncio's: works under any backend anyio runs on.
    await anyio.sleep(seconds)


def _retrying(
    kind: str,
    predicate: Callable[[BaseException], bool],
    attempts: int,
    throttled_attempts: int,
    paced: bool,
    about: Mapping[str, object] | None,
) -> tenacity.AsyncRetrying:
    tries = _Tries(attempts, throttled_attempts, paced)
    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(predicate),
        after=tries.after,
        stop=tries.stop,
        wait=tries.wait,
        sleep=_sleep,
        reraise=True,
        before_sleep=_log_retry(kind, paced, about),
    )


def create_retrying(
    *,
    attempts: int = CREATE_ATTEMPTS,
    throttled_attempts: int = THROTTLED_ATTEMPTS,
    paced: bool = False,
    about: Mapping[str, object] | None = None,
) -> tenacity.AsyncRetrying:
    """Retrying for creates: only what surely created nothing. One per create.

    `about` adds fields to the retry log records (the item key). The last failure
    is re-raised as it is (not wrapped): the runner decides what a final failure
    means for the item.
    """
    return _retrying("create", create_is_retryable, attempts, throttled_attempts, paced, about)


def read_retrying(
    *,
    attempts: int = READ_ATTEMPTS,
    throttled_attempts: int = THROTTLED_ATTEMPTS,
    paced: bool = False,
    about: Mapping[str, object] | None = None,
) -> tenacity.AsyncRetrying:
    """Retrying for polls, downloads and account reads: any transport failure, 429, 5xx."""
    return _retrying("read", read_is_retryable, attempts, throttled_attempts, paced, about)


async def _call(
    retrying: Callable[[], tenacity.AsyncRetrying],
    predicate: Callable[[BaseException], bool],
    call: Callable[[], Awaitable[T]],
) -> T:
    # The first try runs outside tenacity: building and driving its iterator
    # costs 30-60 µs, a sizeable share of a create's CPU at 2,000+ creates/s,
    # and nearly every call succeeds at once. Its failure is then handed to
    # tenacity as attempt 1, so the policy counts, waits and logs it like any.
    try:
        return await call()
    except Exception as exc:
        if not predicate(exc):
            raise
        first = exc
    return await _again(retrying, first, call)


async def _again(
    retrying: Callable[[], tenacity.AsyncRetrying],
    first: Exception,
    call: Callable[[], Awaitable[T]],
) -> T:
    """The retries after a first try that failed with `first` (a retryable error)."""
    failed: Exception | None = first
    async for attempt in retrying():
        with attempt:
            if failed is not None:
                exc, failed = failed, None
                raise exc
            return await call()
    raise AssertionError("unreachable")  # pragma: no cover: reraise=True re-raises


async def create(
    call: Callable[[], Awaitable[T]],
    *,
    paced: bool = False,
    about: Mapping[str, object] | None = None,
) -> T:
    """`await call()` under the create policy (see `create_retrying`); `call` makes one try."""
    return await _call(lambda: create_retrying(paced=paced, about=about), create_is_retryable, call)


async def create_again(
    first: Exception,
    call: Callable[[], Awaitable[T]],
    *,
    paced: bool = False,
    about: Mapping[str, object] | None = None,
) -> T:
    """`create()` for a caller that made the first try itself (no wrapper, no
    closure on the hot path) and saw it fail with `first`, which
    `create_is_retryable` must accept: the policy goes on from attempt 2,
    exactly as `create()` would have."""
    return await _again(lambda: create_retrying(paced=paced, about=about), first, call)


async def read(
    call: Callable[[], Awaitable[T]],
    *,
    paced: bool = False,
    about: Mapping[str, object] | None = None,
) -> T:
    """`await call()` under the read policy (see `read_retrying`); `call` makes one try."""
    return await _call(lambda: read_retrying(paced=paced, about=about), read_is_retryable, call)
