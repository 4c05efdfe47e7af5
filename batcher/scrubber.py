"""Keeping the API key out of every text that came from outside.

A server may echo the key back in an error message, whole, lowercased, or
cut at some length; a message may be shortened right through it. So the
scrubber hides every run of at least MIN_PIECE characters of the text that
matches a piece of the key, case-insensitively, and callers scrub *before*
they shorten.

`Scrubber` holds the secrets of one client; `register` adds a secret to the
process-wide scrubber behind `scrub`, which the places that store or print
text from outside (ledger messages, the manifest, reconcile's views) use as a
backstop, so that a text that did not pass through the client is clean too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final

REDACTED: Final = "[redacted]"
# Any run of this many characters of the key is hidden. Shorter runs would hide
# ordinary words of an error message; 8 characters of a random key are not
# found in ordinary text by chance.
MIN_PIECE: Final = 8
# Secrets shorter than this are test placeholders; scrubbing them would mangle text.
MIN_SECRET_CHARS: Final = 6
# The sandbox's fixed key (batcher.sandbox.config.SANDBOX_KEY) is public, not a
# secret; scrubbing its pieces would mangle every "sandbox-..." name printed.
PUBLIC_KEYS: Final = frozenset({"sandbox-key"})


class Scrubber:
    """Hides any piece (MIN_PIECE characters or more, any case) of its secrets."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._pieces: set[str] = set()
        self._whole: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        if secret is None or len(secret) < MIN_SECRET_CHARS or secret in PUBLIC_KEYS:
            return
        folded = secret.casefold()
        if len(folded) < MIN_PIECE:
            self._whole.add(folded)  # short secrets: only as a whole
            return
        for start in range(len(folded) - MIN_PIECE + 1):
            self._pieces.add(folded[start : start + MIN_PIECE])

    def __bool__(self) -> bool:
        return bool(self._pieces or self._whole)

    def scrub(self, text: str) -> str:
        """`text` with every piece of a secret replaced by REDACTED."""
        if not self or not text:
            return text
        folded = text.casefold()
        if len(folded) != len(text):
            # casefold changed lengths (ß -> ss): positions would not line up;
            # lower() keeps them for every character that matters in a key.
            folded = text.lower()
            if len(folded) != len(text):
                folded = text
        hidden = [False] * len(text)
        for start in range(len(folded) - MIN_PIECE + 1):
            if folded[start : start + MIN_PIECE] in self._pieces:
                for index in range(start, start + MIN_PIECE):
                    hidden[index] = True
        for whole in self._whole:
            start = folded.find(whole)
            while start >= 0:
                for index in range(start, start + len(whole)):
                    hidden[index] = True
                start = folded.find(whole, start + 1)
        if not any(hidden):
            return text
        out: list[str] = []
        previous = False
        for char, gone in zip(text, hidden, strict=True):
            if gone:
                if not previous:
                    out.append(REDACTED)
            else:
                out.append(char)
            previous = gone
        return "".join(out)


_PROCESS: Final = Scrubber()


def register(secret: str | None) -> None:
    """Add a secret (the API key a client was given) to the process-wide scrubber."""
    _PROCESS.add(secret)


def scrub(text: str) -> str:
    """`text` without any piece of a registered secret."""
    return _PROCESS.scrub(text)


def scrub_optional(text: str | None) -> str | None:
    return None if text is None else _PROCESS.scrub(text)


class ScrubbingFilter(logging.Filter):
    """A logging filter that scrubs every record's message and string fields:
    log lines quote API messages too. Attach it to each handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _PROCESS:
            message = record.getMessage()
            clean = _PROCESS.scrub(message)
            if clean != message:
                record.msg, record.args = clean, None
            for name, value in list(vars(record).items()):
                if name not in _RECORD_FIELDS and isinstance(value, str):
                    setattr(record, name, _PROCESS.scrub(value))
        return True


# The attributes every LogRecord has; the others came in `extra=`.
_RECORD_FIELDS: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
