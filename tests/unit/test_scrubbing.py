"""The key scrubber, the terminal's safe text and the charge check: pure functions."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from batcher.client.charges import MAX_PLAUSIBLE_CREDITS, plausible_credits
from batcher.sandbox.config import SANDBOX_KEY
from batcher.scrubber import PUBLIC_KEYS, REDACTED, Scrubber, ScrubbingFilter, register
from batcher.terminal.safe_text import printable

KEY = "mhk_live_9fQ2xLr7TzW4pK8nVb3s"


@pytest.mark.parametrize(
    "text",
    [
        f"bad key {KEY}",
        f"bad key {KEY.lower()}",
        f"bad key {KEY.upper()}!",
        f"prefix {KEY[:8]} suffix",
        f"tail {KEY[-9:]}",
        f"{KEY[3:15]} and {KEY[10:]}",
    ],
)
def test_every_long_piece_of_the_key_is_hidden_in_any_case(text: str) -> None:
    scrubbed = Scrubber([KEY]).scrub(text)
    assert REDACTED in scrubbed
    folded = scrubbed.casefold()
    for start in range(len(KEY) - 7):
        assert KEY[start : start + 8].casefold() not in folded


def test_short_pieces_and_other_text_are_left_alone() -> None:
    scrubber = Scrubber([KEY])
    text = f"HTTP 400: the prompt is empty ({KEY[:7]})"
    assert scrubber.scrub(text) == text


def test_the_sandbox_key_is_public() -> None:
    assert SANDBOX_KEY in PUBLIC_KEYS
    assert not Scrubber([SANDBOX_KEY])


def test_log_records_are_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    register(KEY)
    logger = logging.getLogger("batcher.test_scrubbing")
    caplog.handler.addFilter(ScrubbingFilter())
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("answer: %s", f"echo {KEY}", extra={"error": KEY.upper()})
    [record] = caplog.records
    assert KEY not in record.getMessage() and REDACTED in record.getMessage()
    assert record.error == REDACTED  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a \x1b[31mred\x1b[0m cat", "a red cat"),
        ("title \x1b]0;owned\x07 end", "title  end"),
        ("bell\x07 back\x08 c1\x9b2J", "bell back c1"),
        ("line one\nline two\ttab", "line one\nline two\ttab"),
        ("plain", "plain"),
    ],
)
def test_printable_drops_escapes_and_controls(text: str, shown: str) -> None:
    assert printable(text) == shown


@pytest.mark.parametrize(
    ("value", "credits"),
    [(5, 5), (5.0, 5), (0, 0), (MAX_PLAUSIBLE_CREDITS, MAX_PLAUSIBLE_CREDITS)],
)
def test_plausible_charges(value: Any, credits: int) -> None:
    assert plausible_credits(value) == (credits, None)


@pytest.mark.parametrize(
    "value", [None, "5", 5.5, True, False, -5, 10**18, 1e18, float("nan"), float("inf"), [5]]
)
def test_implausible_charges(value: Any) -> None:
    credits, problem = plausible_credits(value)
    assert credits is None and problem


def test_a_webhook_events_texts_are_scrubbed_like_a_polls() -> None:
    from batcher.client.magic_hour import project_from_event

    register(KEY)
    status = project_from_event(
        {
            "id": "p1",
            "status": "error",
            "name": f"batch {KEY.lower()}",
            "error": {"code": KEY, "message": f"key {KEY} was refused"},
        },
        "p1",
    )
    for text in (status.error_code, status.error_message, status.name):
        assert text is not None and REDACTED in text and KEY[:8] not in text.casefold()
