"""How log records look: on the terminal, in cron's stderr, in `--log-file`.

Every record carries its context as fields (the `extra` of the call, and what
batcher.run.log_context says the task is about): the item key, the project id,
the HTTP method, path and status, the elapsed milliseconds, the attempt and
the wait. The formatters here show them, always in that order and after the
message:

- `compact` (a terminal, beside Rich's own time and level): `message  key=a1
  project=p9 POST /v1/x 200 12ms attempt=2 wait=0.5s`;
- `text` (stderr off a terminal, a text log file): an ISO 8601 UTC time, the
  level, the logger, then the same;
- `json` (a JSON log file): one object per line, every field whole.

The key is never among them: no log call passes it, and the client scrubs it
from error messages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from batcher.run import log_context

# The attributes every LogRecord has: anything else on a record is an extra field.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
# The context fields, in the order they are shown, and how.
_ORDER = ("key", "project_id", "method", "path", "status", "elapsed_ms", "attempt", "wait")


def iso_time(created: float) -> str:
    """A record's time as ISO 8601 UTC with milliseconds: 2026-01-05T03:00:00.123Z."""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's context: the task's (log_context) under the call's own extras."""
    found: dict[str, Any] = dict(log_context.current())
    for name, value in vars(record).items():
        if name not in _STANDARD and not name.startswith("_") and value is not None:
            found[name] = value
    return found


def _ordered(found: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for name in _ORDER:
        if name in found:
            yield name, found[name]
    for name in sorted(found):
        if name not in _ORDER and name != "event":
            yield name, found[name]


def _value(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if (" " in text or not text) else text


def context_text(found: Mapping[str, Any]) -> str:
    """`key=a1 project=p9 POST /v1/x 200 12ms attempt=2 wait=0.5s other=...`."""
    parts: list[str] = []
    for name, value in _ordered(found):
        if name == "project_id":
            parts.append(f"project={_value(value)}")
        elif name in ("method", "path", "status"):
            parts.append(_value(value))
        elif name == "elapsed_ms":
            parts.append(f"{value}ms")
        elif name == "wait":
            parts.append(f"wait={value}s")
        else:
            parts.append(f"{name}={_value(value)}")
    return " ".join(parts)


class CompactFormatter(logging.Formatter):
    """The message and its context on one line (Rich shows the time and level)."""

    def format(self, record: logging.LogRecord) -> str:
        context = context_text(fields(record))
        message = record.getMessage()
        return f"{message}  {context}" if context else message


class TextFormatter(logging.Formatter):
    """`2026-01-05T03:00:00.123Z INFO batcher.x: message  key=... project=...`."""

    def format(self, record: logging.LogRecord) -> str:
        context = context_text(fields(record))
        line = f"{iso_time(record.created)} {record.levelname} {record.name}: "
        line += record.getMessage() + (f"  {context}" if context else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then every field."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in fields(record).items():
            document.setdefault(name, value)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False, default=str)
