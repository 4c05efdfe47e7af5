"""Log records name what they are about: the formatters of batcher.terminal.log_format."""

from __future__ import annotations

import json
import logging

from batcher.run import log_context
from batcher.terminal.log_format import CompactFormatter, JsonFormatter, TextFormatter, iso_time


def record(message: str = "api call", **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("batcher.client.magic_hour", logging.DEBUG, __file__, 1, message,
                             None, None)  # fmt: skip
    made.created = 1767582000.125  # 2026-01-05T03:00:00.125Z
    for name, value in extra.items():
        setattr(made, name, value)
    return made


EXCHANGE = {"event": "api.call", "method": "POST", "path": "/v1/ai-image-generator",
            "status": 200, "elapsed_ms": 12.5}  # fmt: skip


def test_iso_times() -> None:
    assert iso_time(1767582000.125) == "2026-01-05T03:00:00.125Z"


def test_compact_puts_the_context_after_the_message_in_a_fixed_order() -> None:
    with log_context.about(key="a1", project_id="p9"):
        line = CompactFormatter().format(record(**EXCHANGE, attempt=2, wait=0.5, extra_field="x"))
    assert line == (
        "api call  key=a1 project=p9 POST /v1/ai-image-generator 200 12.5ms attempt=2 "
        "wait=0.5s extra_field=x"
    )


def test_text_has_an_iso_time_level_and_logger() -> None:
    line = TextFormatter().format(record(**EXCHANGE))
    assert line.startswith("2026-01-05T03:00:00.125Z DEBUG batcher.client.magic_hour: api call  ")
    assert line.endswith("POST /v1/ai-image-generator 200 12.5ms")


def test_json_has_every_field_and_the_task_context() -> None:
    with log_context.about(key="a1"), log_context.about(project_id="p9"):
        document = json.loads(JsonFormatter().format(record(**EXCHANGE)))
    assert document == {
        "time": "2026-01-05T03:00:00.125Z", "level": "DEBUG",
        "logger": "batcher.client.magic_hour", "message": "api call",
        "key": "a1", "project_id": "p9", **EXCHANGE,
    }  # fmt: skip


def test_the_context_ends_with_its_block() -> None:
    with log_context.about(key="a1"):
        pass
    assert CompactFormatter().format(record("plain")) == "plain"
