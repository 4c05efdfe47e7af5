"""The retry policy, declared once: what is retried, how long we wait, how often.

Two pure predicates decide *whether*; one wait function decides *how long*;
two factories put them into tenacity for the two kinds of call:

- a create is billable and has no idempotency key, so it is retried only when
  it surely created nothing: the connection was never made (ConnectError) or
  the server refused it with 429 or 5xx. A lost answer (ResponseLostError) is
  never re-sent blindly: the item is in doubt and the user decides.
- a poll or a download changes nothing, so any transport failure, 429 and 5xx
  are retried. Other 4xx are answers, not accidents.

Waits honour a server's Retry-After (capped), else back off exponentially with
full jitter, so many workers that failed together do not retry together.

Tests make every wait zero with `instant()` (or `set_waiting(False)`, or
BATCHER_RETRY_INSTANT=1 in the environment, read once at import), so the right
number of attempts happens without sleeping.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

import anyio
import tenacity

from batcher.errors import ApiError, ConnectError, ResponseLostError, TransportError

log = logging.getLogger(__name__)

INSTANT_ENV: Final = "BATCHER_RETRY_INSTANT"

CREATE_ATTEMPTS: Final = 6  # the first try and 5 retries
READ_ATTEMPTS: Final = 6
BACKOFF_INITIAL: Final = 0.5  # seconds: the cap of the first retry's random wait
BACKOFF_MAX: Final = 30.0  # the exponential cap stops growing here
RETRY_AFTER_MAX: Final = 120.0  # a server asking for longer gets this much, then we retry

# Statuses that mean "refused for now, nothing done": too many requests, and
# every 5xx (the API documents that a 5xx create created nothing).
THROTTLED: Final = 429


def _status_is_transient(status: int) -> bool:
    return status == THROTTLED or 500 <= status <= 599


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


def wait_seconds(attempt: int, exc: BaseException | None) -> float:
    """How long to wait after failed attempt `attempt`: Retry-After if given, else backoff."""
    if not _waiting:
        return 0.0
    retry_after = exc.retry_after if isinstance(exc, ApiError) else None
    if retry_after is not None:
        return min(max(0.0, retry_after), RETRY_AFTER_MAX)
    return backoff(attempt)


def create_wait(failures: int, exc: BaseException | None) -> float:
    """Wait before re-sending a create that failed `failures` times (runner's own loop)."""
    return wait_seconds(failures, exc)


class _PolicyWait(tenacity.wait.wait_base):
    """tenacity's view of `wait_seconds`."""

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        return wait_seconds(retry_state.attempt_number, exc)


def _log_retry(kind: str) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        wait = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
        # Our exceptions' messages never hold the key (batcher.client.magic_hour scrubs them).
        log.info(
            "retrying %s after %s",
            kind,
            type(exc).__name__ if exc is not None else "no exception",
            extra={
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


def create_retrying(*, attempts: int = CREATE_ATTEMPTS) -> tenacity.AsyncRetrying:
    """Retrying for creates: only what surely created nothing, `attempts` tries at most.

    The last failure is re-raised as it is (not wrapped): the runner decides what
    a final failure means for the item.
    """
    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(create_is_retryable),
        stop=tenacity.stop_after_attempt(attempts),
        wait=_PolicyWait(),
        sleep=_sleep,
        reraise=True,
        before_sleep=_log_retry("create"),
    )


def read_retrying(*, attempts: int = READ_ATTEMPTS) -> tenacity.AsyncRetrying:
    """Retrying for polls and downloads: any transport failure, 429 and 5xx."""
    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(read_is_retryable),
        stop=tenacity.stop_after_attempt(attempts),
        wait=_PolicyWait(),
        sleep=_sleep,
        reraise=True,
        before_sleep=_log_retry("read"),
    )
