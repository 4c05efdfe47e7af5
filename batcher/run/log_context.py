"""What a log record is about, carried down the call stack: the item key and the
project id a sender or follower is working on, so that a record logged deep in
the client or the retry policy (an API exchange, a retry) names them too.

The library only sets these fields; the CLI's log handlers (batcher.terminal.
log_format) add them to every record. Each anyio task has its own copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import MappingProxyType

# An immutable default: each `about` sets a new mapping, never changes one.
_FIELDS: ContextVar[Mapping[str, object]] = ContextVar(
    "batcher_log_fields", default=MappingProxyType({})
)


@contextmanager
def about(**fields: object) -> Iterator[None]:
    """Inside the block, log records carry `fields` (None values left out)."""
    token = _FIELDS.set({**_FIELDS.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _FIELDS.reset(token)


def about_key(key: str) -> Token[Mapping[str, object]]:
    """`about(key=key)` without a context manager, for the create path: records
    carry `key` until `reset(token)`."""
    fields = _FIELDS.get()
    return _FIELDS.set({**fields, "key": key} if fields else {"key": key})


def reset(token: Token[Mapping[str, object]]) -> None:
    """End what `about_key` began."""
    _FIELDS.reset(token)


def current() -> Mapping[str, object]:
    return _FIELDS.get()
