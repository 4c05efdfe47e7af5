"""The account's webhook, as Magic Hour sends it: events, signatures, retries.

When a render ends the emulator queues an event here: `image.completed`,
or `image.errored` (a failed render, and a canceled one: its payload says
`canceled`). The body is `{"type": ..., "payload": <GET /v1/image-projects/{id}>}`;
each attempt is signed afresh with its own timestamp:

    magic-hour-event-timestamp: <Unix seconds>
    magic-hour-event-signature: hex HMAC-SHA256(secret, "{timestamp}.{raw body}")

A non-2xx answer or a failed connection is retried after `backoff`, then
twice as long each time (1, 2, 4, 8 s... by default), up to `attempts` in
all. Some events are dropped (never sent), duplicated (two deliveries of the
same body) or come with a foreign twin (an event for a project of another
account), as the faults say.

This module only keeps the books: what is due when, and what each attempt got
back. Time is the emulator's clock; the sending is the scheduler's
(scheduler.py), which reads `take_due` and reports with `record`.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

COMPLETED: Final = "image.completed"
ERRORED: Final = "image.errored"
TIMESTAMP_HEADER: Final = "magic-hour-event-timestamp"
SIGNATURE_HEADER: Final = "magic-hour-event-signature"
RECEIVER_DEADLINE: Final = 10.0  # seconds the receiver has to answer, as the docs say

# States of one delivery.
PENDING: Final = "pending"  # waiting for its first attempt or its next retry
SENDING: Final = "sending"  # an attempt is in flight
DELIVERED: Final = "delivered"  # answered 2xx
FAILED: Final = "failed"  # every attempt failed; given up
DROPPED: Final = "dropped"  # never sent (webhook_drop_rate)
STATES: Final = (PENDING, SENDING, DELIVERED, FAILED, DROPPED)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: hex HMAC-SHA256 over "{timestamp}.{raw body}"."""
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signed_headers(secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }


def event_body(event_type: str, payload: Mapping[str, Any]) -> bytes:
    return json.dumps({"type": event_type, "payload": payload}, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One POST to the receiver and what came of it."""

    at: str  # ISO 8601 UTC, when it was sent
    after: float  # seconds after the event was queued (the emulator's clock)
    timestamp: int  # the signed magic-hour-event-timestamp
    status: int | None  # the receiver's HTTP status; None when no answer came
    error: str | None  # why no answer came (connection refused, timeout...)

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "after": round(self.after, 6),
            "timestamp": self.timestamp,
            "status": self.status,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One delivery of one event, as the journal shows it."""

    id: str
    event_id: str  # the same for both copies of a duplicated event
    type: str
    project_id: str
    foreign: bool  # a project of another account
    copy: int  # 1, or 2 for the duplicate
    state: str  # one of STATES
    queued_at: str
    attempts: tuple[WebhookAttempt, ...]
    body: bytes  # the raw body, as signed

    @property
    def payload(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.body)["payload"]
        return document

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_id": self.event_id,
            "type": self.type,
            "project_id": self.project_id,
            "foreign": self.foreign,
            "copy": self.copy,
            "state": self.state,
            "queued_at": self.queued_at,
            "attempts": [attempt.as_dict() for attempt in self.attempts],
            "payload": self.payload,
        }


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An attempt the scheduler is to make now: POST `body` to `url`, signed."""

    delivery_id: str
    url: str
    body: bytes


class _Delivery:
    __slots__ = (
        "attempts",
        "body",
        "copy",
        "event_id",
        "foreign",
        "id",
        "project_id",
        "queued_at",
        "queued_wall",
        "state",
        "type",
    )

    def __init__(
        self,
        delivery_id: str,
        event_id: str,
        event_type: str,
        project_id: str,
        body: bytes,
        *,
        foreign: bool,
        copy: int,
        state: str,
        now: float,
        wall: float,
    ) -> None:
        self.id = delivery_id
        self.event_id = event_id
        self.type = event_type
        self.project_id = project_id
        self.body = body
        self.foreign = foreign
        self.copy = copy
        self.state = state
        self.queued_at = now
        self.queued_wall = wall
        self.attempts: list[WebhookAttempt] = []

    def view(self) -> WebhookDelivery:
        return WebhookDelivery(
            id=self.id,
            event_id=self.event_id,
            type=self.type,
            project_id=self.project_id,
            foreign=self.foreign,
            copy=self.copy,
            state=self.state,
            queued_at=_iso(self.queued_wall),
            attempts=tuple(self.attempts),
            body=self.body,
        )


class WebhookOutbox:
    """Deliveries, due times and the journal of attempts. Not thread-safe: the
    emulator calls it under its own lock."""

    def __init__(self) -> None:
        self._deliveries: list[_Delivery] = []
        self._by_id: dict[str, _Delivery] = {}
        self._due: list[tuple[float, int, _Delivery]] = []  # heap by due time
        self._order = itertools.count()  # breaks ties in the heap: first queued, first sent
        self._events = 0

    def add_event(
        self,
        event_type: str,
        project_id: str,
        body: bytes,
        *,
        now: float,
        wall: float,
        foreign: bool = False,
        copies: int = 1,
        dropped: bool = False,
    ) -> None:
        """Queue an event: due at once, `copies` times, or kept as dropped (never sent)."""
        self._events += 1
        event_id = f"evt_{self._events:06d}"
        for copy in range(1, copies + 1):
            delivery = _Delivery(
                f"whd_{len(self._deliveries) + 1:06d}",
                event_id,
                event_type,
                project_id,
                body,
                foreign=foreign,
                copy=copy,
                state=DROPPED if dropped else PENDING,
                now=now,
                wall=wall,
            )
            self._deliveries.append(delivery)
            self._by_id[delivery.id] = delivery
            if not dropped:
                heapq.heappush(self._due, (now, next(self._order), delivery))

    def take_due(self, now: float) -> list[_Delivery]:
        """The deliveries whose attempt is due by `now`, marked as being sent."""
        due: list[_Delivery] = []
        heap = self._due
        while heap and heap[0][0] <= now:
            delivery = heapq.heappop(heap)[2]
            delivery.state = SENDING
            due.append(delivery)
        return due

    def next_due(self) -> float | None:
        return self._due[0][0] if self._due else None

    def record(
        self,
        delivery_id: str,
        *,
        now: float,
        sent_at: float,
        sent_wall: float,
        timestamp: int,
        status: int | None,
        error: str | None,
        backoff: float,
        attempts: int,
    ) -> None:
        """What an attempt sent at `sent_at` got back by `now`; a failure is
        retried `backoff * 2**(n-1)` seconds after its answer (or its failure)."""
        delivery = self._by_id[delivery_id]
        delivery.attempts.append(
            WebhookAttempt(_iso(sent_wall), sent_at - delivery.queued_at, timestamp, status, error)
        )
        if status is not None and 200 <= status < 300:
            delivery.state = DELIVERED
            return
        made = len(delivery.attempts)
        if made >= attempts:
            delivery.state = FAILED
            return
        delivery.state = PENDING
        heapq.heappush(self._due, (now + backoff * 2 ** (made - 1), next(self._order), delivery))

    def journal(self) -> list[WebhookDelivery]:
        return [delivery.view() for delivery in self._deliveries]

    def counts(self) -> dict[str, int]:
        """Deliveries per state, events queued and attempts made."""
        counts = dict.fromkeys(STATES, 0)
        attempts = 0
        for delivery in self._deliveries:
            counts[delivery.state] += 1
            attempts += len(delivery.attempts)
        return {
            "events": self._events,
            "deliveries": len(self._deliveries),
            **counts,
            "attempts": attempts,
        }


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
