"""What the emulator answers, as values the ASGI layer turns into HTTP.

A `Reply` is a whole answer (a status, a body, headers), or `drop` (close
the connection without a byte), or a `stream` (a body sent over time: one
byte every few seconds, or without end). An `ImageJob` is an authorised
download: which image to draw, in which format, or which bad body to send
instead. No I/O here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

Headers = tuple[tuple[bytes, bytes], ...]

JSON_TYPE: Final = b"application/json"
HTML_TYPE: Final = b"text/html; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Drip:
    """Send the reply's body one byte every `interval` seconds (a slowloris answer)."""

    interval: float


@dataclass(frozen=True, slots=True)
class Endless:
    """Send the reply's body, then filler for ever: a body that never ends."""

    filler: bytes = b"x"


Stream = Drip | Endless


class Reply(NamedTuple):
    """What to answer: a status and a body, or `drop` the connection unanswered.

    With `stream` the body is sent over time instead of at once.
    """

    status: int
    body: bytes = b""
    headers: Headers = ()
    drop: bool = False
    content_type: bytes = JSON_TYPE
    stream: Stream | None = None


@dataclass(frozen=True, slots=True)
class ImageJob:
    """A download the emulator has authorised: what the image must show.

    `image_format` is the encoding of the bytes (png, jpeg, webp), whatever
    the URL's suffix says. `bad` names a bad body to send instead (html,
    empty-body, huge; see SandboxConfig.bad_downloads) and `huge_bytes` the
    size of a huge one.
    """

    project_id: str
    index: int
    image_count: int
    prompt: str
    aspect_ratio: str
    model: str
    image_format: str = "png"
    bad: str | None = None
    huge_bytes: int = 0


_encode_json = json.JSONEncoder(separators=(",", ":")).encode


def encode(document: Any) -> bytes:
    return _encode_json(document).encode("utf-8")


def message_body(message: str) -> bytes:
    return encode({"message": message})


def message_reply(status: int, message: str) -> Reply:
    """A JSON `{"message": ...}` answer."""
    return Reply(status, message_body(message))
