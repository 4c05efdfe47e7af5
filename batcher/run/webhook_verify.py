"""Is this webhook delivery Magic Hour's, fresh, and about what? (Pure.)

A delivery carries two headers:

    magic-hour-event-timestamp: <Unix seconds>
    magic-hour-event-signature: hex HMAC-SHA256(secret, "{timestamp}.{raw body}")

It is taken only when the signature matches (compared in constant time) and
the timestamp is within FRESH_S of now, either way: an old signed body
replayed later is refused like a forged one. The body is then read as
`{"type": ..., "payload": <the project, as GET /v1/image-projects/{id} shows it>}`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

TIMESTAMP_HEADER: Final = "magic-hour-event-timestamp"
SIGNATURE_HEADER: Final = "magic-hour-event-signature"
FRESH_S: Final = 300.0
COMPLETED: Final = "image.completed"
ERRORED: Final = "image.errored"
EVENT_TYPES: Final = (COMPLETED, ERRORED)

# Why a delivery was refused (a word for the log and the counters).
UNSIGNED: Final = "unsigned"
FORGED: Final = "bad signature"
STALE: Final = "stale timestamp"


@dataclass(frozen=True, slots=True)
class Event:
    """A verified event about one project."""

    type: str  # one of EVENT_TYPES
    project_id: str
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Verdict:
    """`refused` says why a delivery gets 401; else `event` is what it said (None: a
    verified delivery of a kind we do not act on, answered 200 and ignored)."""

    refused: str | None = None
    event: Event | None = None


def signature(secret: str, timestamp: str, body: bytes) -> str:
    message = timestamp.encode("ascii", "replace") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify(headers: Mapping[str, str], body: bytes, secret: str, *, now: float) -> Verdict:
    """`headers` with lowercase names; `now` in Unix seconds."""
    timestamp = headers.get(TIMESTAMP_HEADER, "").strip()
    given = headers.get(SIGNATURE_HEADER, "").strip().lower()
    if not timestamp or not given:
        return Verdict(refused=UNSIGNED)
    expected = signature(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode("ascii"), given.encode("ascii", "replace")):
        return Verdict(refused=FORGED)
    try:
        sent = float(timestamp)
    except ValueError:
        return Verdict(refused=STALE)
    if not math.isfinite(sent) or abs(now - sent) > FRESH_S:
        return Verdict(refused=STALE)
    return Verdict(event=parse_event(body))


def parse_event(body: bytes) -> Event | None:
    """The event a verified body tells of; None when it is not one we act on."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    kind = document.get("type")
    payload = document.get("payload")
    if kind not in EVENT_TYPES or not isinstance(payload, dict):
        return None
    project_id = payload.get("id")
    if not isinstance(project_id, str) or not project_id or len(project_id) > 200:
        return None
    return Event(str(kind), project_id, payload)
