"""The review page's HTTP face: a raw ASGI app over the ledger and the batch folder.

Routes (everything else is a 404, a known path with another method a 405):

    GET   /                 the gallery with review controls, built fresh
    GET   /files/{path}     an image or thumbnail of the batch folder, nothing else
    GET   /api/reviews      the decisions in force, as JSON
    POST  /api/reviews      one decision: {"key", "image" (from 0), "verdict":
                            "pick" | "reject" | "clear", "note"} -> {"review": {...} | null}

Every request passes the guard first:

- with a token (any host but loopback), the request must carry it: `?token=`
  in the URL, the `X-Batcher-Token` header, or the cookie the page sets;
  without it the answer is 403, whatever the path;
- on loopback, the Host header must name the loopback address and port, so a
  web page cannot reach the server through a rebound DNS name;
- a POST must be JSON and same-origin: an `Origin` other than the server's
  own, or a `Sec-Fetch-Site` other than same-origin, is refused, so another
  site open in the same browser cannot record decisions.

The ledger is synchronous; its calls run on worker threads.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final
from urllib.parse import parse_qs

import anyio.to_thread

from batcher.errors import BatcherError, ReviewError
from batcher.ledger import Ledger, ReviewRecord
from batcher.reports.gallery import with_thumbnails
from batcher.reports.gallery_data import gallery_data
from batcher.reports.gallery_page import ReviewMode, render_page

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TOKEN_HEADER: Final = b"x-batcher-token"
TOKEN_COOKIE: Final = "batcher_token"  # noqa: S105 - the cookie's name, not a secret
MAX_BODY: Final = 64 * 1024
FILE_BLOCK: Final = 256 * 1024
CONTENT_TYPES: Final = {
    ".png": b"image/png",
    ".jpg": b"image/jpeg",
    ".jpeg": b"image/jpeg",
    ".webp": b"image/webp",
}
# The page's own inline style and script, its images, its API: nothing else.
_CSP: Final = (
    b"default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
    b"script-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; "
    b"form-action 'none'; frame-ancestors 'none'"
)
_COMMON: Final = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # the token is in the URL
    (b"cache-control", b"no-store"),
]


@dataclass(frozen=True, slots=True)
class ReviewTarget:
    """What a review server shows: one batch of one ledger, its files in `folder`."""

    ledger: Ledger
    batch: str
    folder: Path
    rows: str | None = None
    cols: str | None = None


class ReviewApp:
    """ASGI 3 application for one batch's review page."""

    def __init__(
        self,
        target: ReviewTarget,
        *,
        token: str | None,
        allowed_hosts: frozenset[str] | None,
    ) -> None:
        self.target = target
        self.token = token
        self.allowed_hosts = allowed_hosts
        self.root = target.folder.resolve()
        batch = target.ledger.get_batch(target.batch)
        if batch is None:
            raise ReviewError(f"no batch named {target.batch!r} in the ledger")
        self.batch_id = batch.id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off and websockets are not served
            return
        refusal = self._guard(scope)
        if refusal is not None:
            await _send_json(send, 403, {"message": refusal})
            return
        method: str = scope["method"]
        path: str = scope["path"]
        try:
            if path == "/":
                if method not in ("GET", "HEAD"):
                    await _send_json(send, 405, {"message": "method not allowed"})
                    return
                await self._page(scope, send)
            elif path.startswith("/files/"):
                if method not in ("GET", "HEAD"):
                    await _send_json(send, 405, {"message": "method not allowed"})
                    return
                await self._file(path[len("/files/") :], send)
            elif path == "/api/reviews":
                if method == "GET":
                    await self._list(send)
                elif method == "POST":
                    await self._decide(scope, receive, send)
                else:
                    await _send_json(send, 405, {"message": "method not allowed"})
            else:
                await _send_json(send, 404, {"message": "not found"})
        except BatcherError as exc:
            log.warning("review server: %s", exc)
            await _send_json(send, 500, {"message": str(exc)})

    # --- the guard -----------------------------------------------------------------

    def _guard(self, scope: Scope) -> str | None:
        """Why the request is refused, or None."""
        host = (_header(scope, b"host") or b"").decode("latin-1").lower()
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            return "refused: unexpected Host header"
        if self.token is not None and not self._has_token(scope):
            return "refused: this server needs the token printed in its URL"
        if scope["method"] not in ("GET", "HEAD"):
            origin = _header(scope, b"origin")
            if origin is not None and origin.decode("latin-1").lower() != f"http://{host}":
                return "refused: a cross-origin write"
            site = _header(scope, b"sec-fetch-site")
            if site is not None and site not in (b"same-origin", b"none"):
                return "refused: a cross-site write"
        return None

    def _has_token(self, scope: Scope) -> bool:
        assert self.token is not None
        offered: list[str] = []
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        offered += query.get("token", [])
        header = _header(scope, TOKEN_HEADER)
        if header is not None:
            offered.append(header.decode("latin-1"))
        offered += _cookies(scope).get(TOKEN_COOKIE, [])
        expected = self.token.encode()
        return any(secrets.compare_digest(value.encode(), expected) for value in offered)

    # --- routes ----------------------------------------------------------------------

    async def _page(self, scope: Scope, send: Send) -> None:
        target = self.target

        def build() -> str:
            data = gallery_data(
                target.ledger, target.batch, target.folder, rows=target.rows, cols=target.cols
            )
            data, _ = with_thumbnails(data, target.folder)
            return render_page(data, review=ReviewMode(token=self.token))

        body = (await anyio.to_thread.run_sync(build)).encode("utf-8")
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"content-security-policy", _CSP),
            *_COMMON,
        ]
        if self.token is not None:
            cookie = f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
            headers.append((b"set-cookie", cookie.encode("latin-1")))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    def _resolve(self, relative: str) -> Path | None:
        """The file of the batch folder that `relative` names, or None: only
        images, only inside the folder, no way out through '..' or a link."""
        if not relative or "\x00" in relative or "\\" in relative:
            return None
        parts = PurePosixPath(relative).parts
        if relative.startswith("/") or any(part in ("", ".", "..") for part in parts):
            return None
        if PurePosixPath(relative).suffix.lower() not in CONTENT_TYPES:
            return None
        candidate = (self.root / relative).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate

    async def _file(self, relative: str, send: Send) -> None:
        path = await anyio.to_thread.run_sync(self._resolve, relative)
        if path is None:
            await _send_json(send, 404, {"message": "not found"})
            return
        try:
            stream = await anyio.open_file(path, "rb")
        except OSError:
            await _send_json(send, 404, {"message": "not found"})
            return
        async with stream:
            size = (await anyio.Path(path).stat()).st_size
            headers = [
                (b"content-type", CONTENT_TYPES[path.suffix.lower()]),
                (b"content-length", b"%d" % size),
                (b"x-content-type-options", b"nosniff"),
                (b"cache-control", b"private, no-cache"),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            sent = 0
            while sent < size:
                block = await stream.read(min(FILE_BLOCK, size - sent))
                if not block:
                    break
                sent += len(block)
                await send({"type": "http.response.body", "body": block, "more_body": sent < size})
            if sent < size:  # the file shrank under us: end the body anyway
                await send({"type": "http.response.body", "body": b""})

    async def _list(self, send: Send) -> None:
        found = await anyio.to_thread.run_sync(self.target.ledger.latest_reviews, self.batch_id)
        await _send_json(
            send,
            200,
            {"reviews": [_review_json(review) for review in found.values()]},
        )

    async def _decide(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            await _send_json(send, 415, {"message": "a decision is sent as application/json"})
            return
        body = await _read_body(receive)
        if body is None:
            await _send_json(send, 413, {"message": "request body too large"})
            return
        try:
            request = json.loads(body)
            key, image, verdict = request["key"], request["image"], request["verdict"]
            note = request.get("note")
            if not (
                isinstance(key, str)
                and isinstance(image, int)
                and isinstance(verdict, str)
                and (note is None or isinstance(note, str))
            ):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            await _send_json(
                send, 400, {"message": 'expected {"key", "image", "verdict", "note"} as JSON'}
            )
            return
        try:
            decision = await anyio.to_thread.run_sync(
                lambda: self.target.ledger.record_review(self.batch_id, key, image, verdict, note)
            )
        except ReviewError as exc:
            await _send_json(send, 400, {"message": str(exc)})
            return
        await _send_json(
            send, 200, {"review": None if decision is None else _review_json(decision)}
        )


def _review_json(review: ReviewRecord) -> dict[str, Any]:
    return {
        "key": review.item_key,
        "image": review.image,
        "verdict": review.verdict,
        "note": review.note,
        "at": review.at.isoformat(),
    }


async def _send_json(send: Send, status: int, document: Any) -> None:
    body = json.dumps(document, ensure_ascii=False).encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        *_COMMON,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None past MAX_BODY."""
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if len(body) > MAX_BODY:
            return None
        if not message.get("more_body", False):
            return body


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _cookies(scope: Scope) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key, value in scope["headers"]:
        if key != b"cookie":
            continue
        for pair in value.decode("latin-1").split(";"):
            name, _, content = pair.strip().partition("=")
            if name:
                found.setdefault(name, []).append(content)
    return found
