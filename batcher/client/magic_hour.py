"""Typed async client of Magic Hour's image API, and the connection pool under it.

    MagicHourClient           what the runner calls: create, poll, delete, account, download
      │ API calls: prebuilt httpx.Request straight into the transport
      │ downloads: an httpx.AsyncClient (redirects, streaming) over the same transport
      ▼
    httpx.AsyncBaseTransport  the seam: PooledTransport in production,
                              httpx.MockTransport (or any transport) in tests
      ▼
    PooledTransport           one O(1) pool of httpcore HTTP/1.1 connections

Every httpx exception is translated here, once, into batcher.errors, and the
translation is about money (a create is billed when accepted):

    httpx.ConnectError, ConnectTimeout, PoolTimeout, UnsupportedProtocol
        → ConnectError: the request was never written, surely nothing happened
    ReadTimeout, WriteTimeout, ReadError, WriteError, RemoteProtocolError,
    any other httpx error
        → ResponseLostError: the request may have been processed
    2xx whose body is unusable (a create without an id), or an answer that is
    neither 2xx, 4xx nor 5xx (a 3xx, a 1xx: something in front of the API)
        → MalformedResponseError (a ResponseLostError): a create is in doubt
    a body over the cap (--max-body-bytes), announced or streamed
        → BodyTooLargeError (a MalformedResponseError), read no further
    a create with an id but an implausible credits_charged (missing, a string,
    5.5, true, negative, beyond MAX_PLAUSIBLE_CREDITS)
        → CreatedProject(credits_charged=None, charge_problem=...): the id is
          kept, the charge is unknown until a poll says it
    4xx/5xx → ApiError(status, message, retry_after); 401 → AuthError;
    403/404/410 on a signed download URL → DownloadExpiredError
    a download URL that is not http(s) with a host → ConnectError (nothing sent)
    a download body over the size cap → DownloadTooLargeError (stopped at the cap)
    OSError writing a downloaded image (full disk...) → OutputError(path)
    a create with no complete answer by its overall deadline → ResponseLostError

Timeouts adapt (batcher.client.latency): the read timeout of creates and of
polls follows a high quantile of their recent answers' durations, never below
the configured one, and doubles after each timeout up to a ceiling. On top,
each create has an overall deadline (`create_deadline`, `--create-timeout`):
a server that drips a byte now and then never trips a read timeout, and a
create must not hold its item (and a shutdown) forever.

Why not a plain `httpx.AsyncClient()`: measured on the 2-core dev machine with
64 workers (bench/pool_experiments.py, medians of 3 runs), httpcore's pool
rescans every connection, and asks every idle socket whether it is readable,
on each request and each response close, so it gets slower as connections are
added (encode/httpx#3215). A bare AsyncClient made about 530 creates/s (and
130/s with max_keepalive_connections=64); several small httpcore pools side
by side about 1,500/s; this module about 2,900/s, and 1,200/s (94% of the
64 / 0.05 s ceiling) when every answer takes 50 ms. PooledTransport keeps idle
connections in a LIFO stack per origin, checks only the one it pops, and
bounds open connections with one semaphore: O(1) per request at any
concurrency, creating no lock or event per request (httpcore's pool makes an
event per request, and each new one asks sniffio which event loop runs). API
calls skip AsyncClient.send (auth flow, redirects, cookie jar: nothing this
API uses), which was another third of the client's CPU per request.

The API key lives in one prebuilt header and nowhere else: not in the
AsyncClient (downloads must not carry it), not in any message (every text that
comes from outside is scrubbed of it), not in repr().
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, cast
from urllib.parse import quote

import anyio
import anyio.to_thread
import httpx

from batcher.client.charges import plausible_credits, plausible_or_none
from batcher.client.latency import AdaptiveTimeout
from batcher.client.pool import PooledTransport
from batcher.errors import (
    ApiError,
    AuthError,
    BodyTooLargeError,
    ConfigError,
    ConnectError,
    DownloadExpiredError,
    DownloadTooLargeError,
    MalformedResponseError,
    OutputError,
    ResponseLostError,
    TransportError,
)
from batcher.scrubber import Scrubber, register, scrub_optional
from batcher.settings import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_CONCURRENCY,
    DEFAULT_CREATE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_POLL_TIMEOUT,
    VERSION,
    ApiConfig,
)

log = logging.getLogger(__name__)

CREATE_PATH: Final = "/v1/ai-image-generator"
PROJECT_PATH: Final = "/v1/image-projects/"
ACCOUNT_PATH: Final = "/v1/account"

# Timeouts, seconds. A create that times out after the request went out leaves
# its item in doubt (maybe charged), so its read timeout is generous; a poll is
# cheap and safe to retry, so it gives up sooner. Connect and pool waits are
# safe for creates too (nothing was sent) and are retried by the retry policy.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
DEFAULT_WRITE_TIMEOUT: Final = 20.0
DEFAULT_POOL_TIMEOUT: Final = 60.0
DEFAULT_CREATE_READ_TIMEOUT: Final = 90.0
DEFAULT_READ_TIMEOUT: Final = DEFAULT_POLL_TIMEOUT
DEFAULT_DOWNLOAD_READ_TIMEOUT: Final = 60.0
# A create's overall deadline (--create-timeout): past it the create is in doubt.
DEFAULT_CREATE_DEADLINE: Final = DEFAULT_CREATE_TIMEOUT
# A poll's read timeout may grow to this many times the configured one.
POLL_TIMEOUT_STRETCH: Final = 10.0
EXTENSIONS_KEPT: Final = 256  # timeout extensions cached (the adaptive ones vary)

# The pool opens up to this many connections per unit of `concurrency`: one for
# API calls (metered by the limiter) and one for downloads (not metered).
POOL_CONNECTIONS_PER_WORKER: Final = 2
DOWNLOAD_MAX_REDIRECTS: Final = 5
DOWNLOAD_CHUNK_BYTES: Final = 256 * 1024
ERROR_BODY_MAX_BYTES: Final = 8 * 1024  # read at most this much of an error answer
MESSAGE_EXCERPT_CHARS: Final = 200
# Read this much of a message before scrubbing it, then shorten it to the
# excerpt: a key straddling the cut is still whole when it is scrubbed.
MESSAGE_SCAN_CHARS: Final = 4 * MESSAGE_EXCERPT_CHARS
MAX_PROJECT_ID_CHARS: Final = 200  # the ledger's column

USER_AGENT: Final = f"batcher/{VERSION}"
PROJECT_STATES: Final = ("draft", "queued", "rendering", "complete", "error", "canceled")
FINISHED_STATES: Final = frozenset({"complete", "error", "canceled"})
EXPIRED_DOWNLOAD_STATUSES: Final = frozenset({403, 404, 410})


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class CreatedProject:
    """A create the API accepted: poll `project_id`; `credits_charged` were billed.

    `credits_charged` is None when the answer's charge was unusable (missing,
    not a whole number, implausible): the project exists and may be charged,
    and `charge_problem` says what was wrong; a poll tells the charge.
    """

    project_id: str
    credits_charged: int | None
    charge_problem: str | None = None


@dataclass(frozen=True, slots=True)
class Download:
    """A signed URL of one image; fetched without the bearer header, expires (~24 h)."""

    url: str
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class ProjectStatus:
    """One GET of an image project, parsed leniently (unknown fields ignored)."""

    project_id: str
    status: str  # one of PROJECT_STATES; an unknown new state is kept, not refused
    credits_charged: int | None  # includes the refund once a render failed
    downloads: tuple[Download, ...]
    error_code: str | None
    error_message: str | None
    image_count: int | None
    name: str | None
    enabled: bool | None  # False once deleted
    created_at: datetime | None

    @property
    def is_finished(self) -> bool:
        """The render will not change any more: complete, error or canceled."""
        return self.status in FINISHED_STATES


@dataclass(frozen=True, slots=True)
class Account:
    """The key's account: balance and tier."""

    account_id: str | None
    email: str | None
    credits: int
    tier: str  # free|creator|pro|business, kept as sent
    subscription: object  # passed through as parsed JSON


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; see the DEFAULT_* constants for why each is what it is."""

    connect: float = DEFAULT_CONNECT_TIMEOUT
    write: float = DEFAULT_WRITE_TIMEOUT
    pool: float = DEFAULT_POOL_TIMEOUT
    create_read: float = DEFAULT_CREATE_READ_TIMEOUT
    read: float = DEFAULT_READ_TIMEOUT
    download_read: float = DEFAULT_DOWNLOAD_READ_TIMEOUT
    create_deadline: float = DEFAULT_CREATE_DEADLINE

    def extension(self, read: float) -> dict[str, Any]:
        """The httpcore `timeout` request extension for a call with this read timeout."""
        return {
            "timeout": {
                "connect": self.connect,
                "read": read,
                "write": self.write,
                "pool": self.pool,
            }
        }


DEFAULT_TIMEOUTS: Final = Timeouts()


# --------------------------------------------------------------------------- client


class MagicHourClient:
    """Async client of the Magic Hour API; use as `async with MagicHourClient(cfg) as c:`.

    `concurrency` is the most API calls the caller keeps in flight at once (the
    runner's limiter ceiling); the pool opens up to POOL_CONNECTIONS_PER_WORKER
    connections per unit of it. `max_download_bytes` caps each download (a body
    that grows past it is cut off and refused). `transport` replaces the pool
    (tests pass an httpx.MockTransport); the client closes it on exit either way.
    """

    def __init__(
        self,
        config: ApiConfig,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        max_download_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if max_download_bytes < 1:
            raise ConfigError(f"max_download_bytes must be at least 1, not {max_download_bytes}")
        if max_body_bytes < 1:
            raise ConfigError(f"max_body_bytes must be at least 1, not {max_body_bytes}")
        check_api_config(config)
        base = config.base_url.rstrip("/")
        key = config.api_key

        self._base = base
        self._concurrency = concurrency
        self._timeouts = timeouts
        self._max_download = max_download_bytes
        self._max_body = max_body_bytes
        self._scrubber = Scrubber([key])
        register(key)  # the stores and views scrub with it too, as a backstop
        self._transport = transport or PooledTransport(concurrency * POOL_CONNECTIONS_PER_WORKER)

        common: list[tuple[bytes, bytes]] = [
            (b"Accept", b"application/json"),
            (b"User-Agent", USER_AGENT.encode("ascii")),
        ]
        if key is not None:
            common.append((b"Authorization", b"Bearer " + key.encode("ascii")))
        # Built once as httpx.Headers: a request copies them as they are, where a
        # list of pairs would be validated and normalised again on every request.
        self._headers = httpx.Headers(common)
        self._json_headers = httpx.Headers([*common, (b"Content-Type", b"application/json")])
        self._create_url = httpx.URL(base + CREATE_PATH)
        self._account_url = httpx.URL(base + ACCOUNT_PATH)
        self._read_ext = timeouts.extension(timeouts.read)
        deadline = timeouts.create_deadline
        self._create_timeout = AdaptiveTimeout(
            min(timeouts.create_read, deadline), max(timeouts.create_read, deadline)
        )
        self._poll_timeout = AdaptiveTimeout(timeouts.read, timeouts.read * POLL_TIMEOUT_STRETCH)
        self._extensions: dict[float, dict[str, Any]] = {}
        self._encode = json.JSONEncoder(
            ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode

        # Downloads go through a full AsyncClient (redirects, streaming) over
        # the same pool. It has no Authorization header: signed URLs must not
        # get it, and they may be on another host.
        self._http = httpx.AsyncClient(
            transport=self._transport,
            headers={"User-Agent": USER_AGENT, "Accept": "*/*"},
            timeout=httpx.Timeout(
                timeouts.download_read,
                connect=timeouts.connect,
                write=timeouts.write,
                pool=timeouts.pool,
            ),
            follow_redirects=True,
            max_redirects=DOWNLOAD_MAX_REDIRECTS,
            trust_env=False,
        )

    def __repr__(self) -> str:
        return f"MagicHourClient(base_url={self._base!r}, concurrency={self._concurrency})"

    @property
    def base_url(self) -> str:
        return self._base

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()  # closes the transport too

    # ----------------------------------------------------------------- API calls

    async def create_image(self, body: Mapping[str, Any]) -> CreatedProject:
        """POST /v1/ai-image-generator. Billable: see the module docstring for errors."""
        content = self._encode(body).encode("utf-8")
        deadline = self._timeouts.create_deadline
        with anyio.move_on_after(deadline) as scope:
            status, headers, raw, reason = await self._call(
                "POST",
                self._create_url,
                self._json_headers,
                content,
                self._create_timeout,
                "create",
            )
        if scope.cancelled_caught:
            raise ResponseLostError(
                f"create: no complete answer within its {deadline:g} s deadline "
                "(--create-timeout); it may have been processed"
            )
        if 400 <= status < 600:
            raise self._api_error(status, headers, raw, reason, download=False)
        if not 200 <= status < 300:
            # A redirect to a login page, a 1xx: not the API's word on the create,
            # which may have been accepted and charged behind it.
            raise MalformedResponseError(
                f"create answered HTTP {status} ({self._scrub(reason) or 'no reason'}), "
                "neither a success nor an error: it may have been charged"
            )
        data = self._json_object(raw, "create", maybe_charged=True)
        project_id = self._usable_id(data.get("id"))
        if project_id is None:
            raise MalformedResponseError(
                f"create answered {status} without a usable project id: it may have been "
                "charged, and there is nothing to poll"
            )
        credits, problem = plausible_credits(data.get("credits_charged"))
        if problem is not None:
            log.warning(
                "create answered with an unusable charge; the charge is unknown until a poll",
                extra={"project_id": project_id, "error": problem},
            )
        return CreatedProject(project_id, credits, problem)

    async def get_project(self, project_id: str) -> ProjectStatus:
        """GET /v1/image-projects/{id}."""
        status, headers, raw, reason = await self._call(
            "GET", self._project_url(project_id), self._headers, None, self._poll_timeout, "poll"
        )
        if not 200 <= status < 300:
            raise self._api_error(status, headers, raw, reason, download=False)
        parsed = _parse_project(self._json_object(raw, "poll", maybe_charged=False), project_id)
        # Every text of the answer came from outside: none may carry the key on.
        return dataclasses.replace(
            parsed,
            error_code=self._scrub_optional(parsed.error_code),
            error_message=self._scrub_optional(parsed.error_message),
            name=self._scrub_optional(parsed.name),
        )

    async def delete_project(self, project_id: str) -> None:
        """DELETE /v1/image-projects/{id} (204)."""
        status, headers, raw, reason = await self._call(
            "DELETE", self._project_url(project_id), self._headers, None, self._read_ext, "delete"
        )
        if not 200 <= status < 300:
            raise self._api_error(status, headers, raw, reason, download=False)

    async def get_account(self) -> Account:
        """GET /v1/account."""
        status, headers, raw, reason = await self._call(
            "GET", self._account_url, self._headers, None, self._read_ext, "account"
        )
        if not 200 <= status < 300:
            raise self._api_error(status, headers, raw, reason, download=False)
        data = self._json_object(raw, "account", maybe_charged=False)
        credits = _int_or_none(data.get("credits"))
        tier = self._scrub_optional(_str_or_none(data.get("tier")))
        if credits is None or tier is None:
            raise MalformedResponseError("account answer without usable credits and tier")
        return Account(
            account_id=_str_or_none(data.get("id")),
            email=_str_or_none(data.get("email")),
            credits=credits,
            tier=tier,
            subscription=data.get("subscription"),
        )

    async def download(self, url: str, dest: Path) -> int:
        """Fetch a signed URL (no bearer header) into `dest` atomically; return bytes written.

        The body streams into a temporary file beside `dest`, is fsynced, then
        renamed over `dest`: a reader never sees a partial image, and a failure
        leaves no partial file behind. A body larger than the client's
        `max_download_bytes` (announced by its Content-Length, or counted as it
        streams) is stopped at the cap: DownloadTooLargeError, nothing kept. A
        file that cannot be written (a full disk, a folder gone) raises
        OutputError naming `dest`.
        """
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ConnectError(f"download URL is not valid: {exc}") from None
        if target.scheme not in ("http", "https") or not target.host:
            raise ConnectError(f"download URL is not an http(s) URL with a host: {target.scheme!r}")
        where = _describe_url(target)
        dest = Path(dest)
        folder = dest.parent
        with _writing(dest):
            await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
            fd, tmp_name = await anyio.to_thread.run_sync(
                lambda: new_temporary(folder, prefix=f".{dest.name}.", suffix=".part")
            )
        tmp = Path(tmp_name)
        written = 0
        started = time.perf_counter()
        try:
            # OSError here is the file's: the stream's own errors (socket errors
            # included) come out of httpx as httpx errors, translated just below.
            with _writing(dest):
                async with await anyio.open_file(fd, "wb") as out:
                    try:
                        async with self._http.stream("GET", target) as response:
                            if not response.is_success:
                                raw = await _read_capped(response)
                                raise self._api_error(
                                    response.status_code,
                                    response.headers,
                                    raw,
                                    response.reason_phrase,
                                    download=True,
                                )
                            cap = self._max_download
                            if _announced_length(response.headers) > cap:
                                raise DownloadTooLargeError(where, cap)
                            async for chunk in response.aiter_bytes(DOWNLOAD_CHUNK_BYTES):
                                written += len(chunk)
                                if written > cap:
                                    # Stop reading: a body that never ends must
                                    # not reach the disk, nor memory.
                                    raise DownloadTooLargeError(where, cap)
                                await out.write(chunk)
                    except _HTTPX_ERRORS as exc:
                        raise self._transport_error(exc, f"download {where}") from None
                    await out.flush()
                    await anyio.to_thread.run_sync(os.fsync, out.wrapped.fileno())
                await anyio.to_thread.run_sync(_replace_durably, tmp, dest)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove_quietly, tmp)
            raise
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "download done",
                extra={
                    "event": "api.download",
                    "where": where,
                    "bytes": written,
                    "elapsed_ms": round(1000 * (time.perf_counter() - started), 1),
                },
            )
        return written

    # ----------------------------------------------------------------- plumbing

    def _project_url(self, project_id: str) -> httpx.URL:
        if not project_id:
            raise ValueError("project_id must not be empty")
        return httpx.URL(self._base + PROJECT_PATH + quote(project_id, safe=""))

    async def _call(
        self,
        method: str,
        url: httpx.URL,
        headers: httpx.Headers,
        content: bytes | None,
        limits: dict[str, Any] | AdaptiveTimeout,
        what: str,
    ) -> tuple[int, httpx.Headers, bytes, str]:
        """Send one API request straight to the transport; return status, headers,
        body. `limits`: a fixed timeout extension, or a timeout that adapts to latency."""
        if isinstance(limits, AdaptiveTimeout):
            adaptive: AdaptiveTimeout | None = limits
            extensions = self._extension(limits.current)
        else:
            adaptive, extensions = None, limits
        request = httpx.Request(
            method, url, headers=headers, content=content, extensions=extensions
        )
        started = time.perf_counter()
        try:
            response = await self._transport.handle_async_request(request)
            try:
                raw = await self._read_body(response, what)
            finally:
                await response.aclose()
        except _HTTPX_ERRORS as exc:
            if adaptive is not None and isinstance(exc, httpx.ReadTimeout):
                adaptive.timed_out()
            raise self._transport_error(exc, what) from None
        if adaptive is not None:
            adaptive.answered(time.perf_counter() - started)
        status = response.status_code
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "api call",
                extra={
                    "event": "api.call",
                    "call": what,
                    "method": method,
                    "path": url.path,
                    "status": status,
                    "elapsed_ms": round(1000 * (time.perf_counter() - started), 1),
                },
            )
        return status, response.headers, raw, response.reason_phrase

    def _extension(self, read: float) -> dict[str, Any]:
        """The timeout extension for a read timeout, built once per value."""
        extension = self._extensions.get(read)
        if extension is None:
            if len(self._extensions) > EXTENSIONS_KEPT:
                self._extensions.clear()
            extension = self._extensions[read] = self._timeouts.extension(read)
        return extension

    async def _read_body(self, response: httpx.Response, what: str) -> bytes:
        """The body, streamed and counted: one over the cap is refused unread, so a
        body that never ends costs neither memory nor time beyond the cap."""
        cap = self._max_body
        headers = response.headers
        if _announced_length(headers) > cap:
            raise BodyTooLargeError(what, cap)
        # Without a Content-Encoding the decoded body is the raw one: read the
        # transport's stream itself, not through httpx's decoder and chunkers
        # (which would hand on the very same bytes, at twice the cost per create).
        chunks = (
            response.aiter_bytes()
            if "content-encoding" in headers
            else cast(httpx.AsyncByteStream, response.stream)
        )
        # One growing buffer, not a list of chunks joined at the end: a body near
        # the cap is held once, in one allocation the allocator gives back.
        body = bytearray()
        async for chunk in chunks:
            if len(body) + len(chunk) > cap:
                # Freed now: the error's traceback (kept by retries, logs)
                # holds this frame, and must not hold the body with it.
                body.clear()
                raise BodyTooLargeError(what, cap)
            body += chunk
        return bytes(body)

    def _transport_error(self, exc: Exception, what: str) -> TransportError:
        detail = self._scrub(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        if isinstance(exc, _NEVER_SENT):
            return ConnectError(f"{what}: could not reach the API, nothing was sent ({detail})")
        return ResponseLostError(
            f"{what}: the request went out but no complete answer came back ({detail}); "
            "it may have been processed"
        )

    def _json_object(self, raw: bytes, what: str, *, maybe_charged: bool) -> dict[str, Any]:
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            consequence = " it may have been charged" if maybe_charged else ""
            raise MalformedResponseError(
                f"{what}: a success answer whose body is not a JSON object "
                f"({self._excerpt(raw) or 'empty'}).{consequence}"
            )
        return data

    def _api_error(
        self,
        status: int,
        headers: httpx.Headers,
        raw: bytes,
        reason: str,
        *,
        download: bool,
    ) -> ApiError:
        # Scrubbed whole, then shortened: a key cut in two by the shortening
        # would no longer be found.
        message = _shorten(self._scrub(_error_message(raw, reason, status)))
        retry_after = parse_retry_after(headers.get("retry-after"))
        klass: type[ApiError] = ApiError
        if download:
            if status in EXPIRED_DOWNLOAD_STATUSES:
                klass = DownloadExpiredError
        elif status == HTTPStatus.UNAUTHORIZED:
            klass = AuthError
        return klass(status, message, retry_after)

    def _excerpt(self, raw: bytes) -> str:
        return _shorten(self._scrub(_flat_text(raw)))

    def _scrub(self, text: str) -> str:
        # The server could echo the key back ("invalid key mhk_..."), whole,
        # lowercased or in part: never pass any of it on.
        return self._scrubber.scrub(text)

    def _scrub_optional(self, text: str | None) -> str | None:
        return None if text is None else self._scrubber.scrub(text)

    def _usable_id(self, value: Any) -> str | None:
        """A project id we can store and poll: a short printable string."""
        project_id = _str_or_none(value)
        if project_id is None or len(project_id) > MAX_PROJECT_ID_CHARS:
            return None
        if not project_id.isprintable() or self._scrub(project_id) != project_id:
            return None
        return project_id


def check_api_config(config: ApiConfig) -> None:
    """ConfigError (exit 2) for a base URL or key no request could be made with;
    checked before anything is written, so a bad endpoint is never stored."""
    base = config.base_url.rstrip("/")
    try:
        base_url = httpx.URL(base)
    except httpx.InvalidURL as exc:
        raise ConfigError(
            f"API base URL {base!r} (--base-url or {BASE_URL_ENV}) is not a valid URL: {exc}"
        ) from None
    if base_url.scheme not in ("http", "https") or not base_url.host:
        raise ConfigError(
            f"API base URL {base!r} (--base-url or {BASE_URL_ENV}) must start with "
            "http:// or https:// and name a host"
        )
    key = config.api_key
    if key is not None and (not key.isascii() or not key.isprintable() or " " in key):
        # h11 would refuse the header and quote it in its error message.
        raise ConfigError(
            f"the API key in {API_KEY_ENV} holds characters that cannot go in an HTTP header"
        )


# httpx raises these (and only these) from a request; InvalidURL and
# StreamError are not HTTPError subclasses but are httpx's all the same.
_HTTPX_ERRORS: Final = (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError)
# The request was surely not written: the connection was never made, no
# connection was free in the pool, or the URL could not even be used.
_NEVER_SENT: Final = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)


# --------------------------------------------------------------------------- parsing


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds (floats tolerated) or HTTP-date.

    None when absent or unreadable; never negative.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _error_message(raw: bytes, reason: str, status: int) -> str:
    """The best human message of an error answer: message, error, detail, body, reason."""
    data: Any = None
    if raw:
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
    fields = ("message", "error", "detail")
    if isinstance(data, dict):
        for field in fields:
            text = _message_text(data.get(field))
            if text:
                return text
    elif isinstance(data, str | list):
        text = _message_text(data)
        if text:
            return text
    # Not JSON, or JSON with other fields than we know: an excerpt still tells
    # more than the reason phrase (an HTML error page, {"code": "..."}).
    informative = data is None or (isinstance(data, dict) and any(k not in fields for k in data))
    excerpt = _flat_text(raw) if informative else ""
    if excerpt:
        return excerpt
    if reason:
        return reason
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _message_text(value: Any) -> str:
    """Text of a `message`/`error`/`detail` value: a string, an object or a list of them.

    Not shortened here: the caller scrubs the whole text first, then shortens it.
    """
    if isinstance(value, str):
        return value.strip()[:MESSAGE_SCAN_CHARS]
    if isinstance(value, dict):
        # {"error": {"code": ..., "message": ...}} and FastAPI-like {"msg": ..., "loc": ...}
        for field in ("message", "msg", "detail", "error", "description"):
            inner = value.get(field)
            if isinstance(inner, str) and inner.strip():
                text = inner.strip()
                loc = value.get("loc")
                if isinstance(loc, list) and loc:
                    text = f"{'.'.join(str(part) for part in loc)}: {text}"
                return text[:MESSAGE_SCAN_CHARS]
        if not value:
            return ""
        return json.dumps(value, ensure_ascii=False, sort_keys=True)[:MESSAGE_SCAN_CHARS]
    if isinstance(value, list):
        parts = [text for text in (_message_text(item) for item in value[:20]) if text]
        return "; ".join(parts)[:MESSAGE_SCAN_CHARS]
    if value is None or isinstance(value, bool):
        return ""
    return str(value)[:MESSAGE_SCAN_CHARS]


def _flat_text(raw: bytes) -> str:
    """The start of a body as one line of text (not yet scrubbed nor shortened)."""
    text = raw[:MESSAGE_SCAN_CHARS].decode("utf-8", errors="replace")
    return " ".join(text.split())


def _shorten(text: str) -> str:
    if len(text) <= MESSAGE_EXCERPT_CHARS:
        return text
    return text[: MESSAGE_EXCERPT_CHARS - 1] + "…"


def _str_or_none(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _int_or_none(value: Any) -> int | None:
    """An int, or a float that is integral (5.0); anything else (bool, 5.5, "5") is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _datetime_or_none(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def project_from_event(data: Mapping[str, Any], project_id: str) -> ProjectStatus:
    """A project document that came another way than a GET (a webhook event's
    payload), read exactly like a poll answer; MalformedResponseError without a status.
    Its texts came from outside, as a poll's do: none may carry the key on."""
    parsed = _parse_project(dict(data), project_id)
    return dataclasses.replace(
        parsed,
        error_code=scrub_optional(parsed.error_code),
        error_message=scrub_optional(parsed.error_message),
        name=scrub_optional(parsed.name),
    )


def _parse_project(data: dict[str, Any], requested_id: str) -> ProjectStatus:
    status = data.get("status")
    if not isinstance(status, str) or not status.strip():
        raise MalformedResponseError(f"poll of {requested_id}: answer without a status")
    downloads: list[Download] = []
    entries = data.get("downloads")
    if isinstance(entries, list):
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("url"), str) and entry["url"]:
                downloads.append(Download(entry["url"], _datetime_or_none(entry.get("expires_at"))))
    error = data.get("error")
    error_code: str | None = None
    error_message: str | None = None
    if isinstance(error, dict):
        error_code = _str_or_none(error.get("code"))
        error_message = _str_or_none(error.get("message"))
    elif isinstance(error, str) and error:
        error_message = error
    enabled = data.get("enabled")
    return ProjectStatus(
        project_id=_str_or_none(data.get("id")) or requested_id,
        status=status.strip().lower(),
        credits_charged=plausible_or_none(data.get("credits_charged")),
        downloads=tuple(downloads),
        error_code=error_code,
        error_message=error_message,
        image_count=_int_or_none(data.get("image_count")),
        name=_str_or_none(data.get("name")),
        enabled=enabled if isinstance(enabled, bool) else None,
        created_at=_datetime_or_none(data.get("created_at")),
    )


def _describe_url(url: httpx.URL) -> str:
    # Host and path only: the query of a signed URL is a credential.
    return f"{url.host}{url.path}"


def _announced_length(headers: httpx.Headers) -> int:
    """The Content-Length of a response, 0 when absent or unreadable (then the
    body is counted as it streams)."""
    try:
        return max(0, int(headers.get("content-length", "0")))
    except ValueError:
        return 0


async def _read_capped(response: httpx.Response) -> bytes:
    """At most ERROR_BODY_MAX_BYTES of a streamed error answer."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        parts.append(chunk)
        size += len(chunk)
        if size >= ERROR_BODY_MAX_BYTES:
            break
    return b"".join(parts)[:ERROR_BODY_MAX_BYTES]


@contextlib.contextmanager
def _writing(dest: Path) -> Iterator[None]:
    """OSError from writing `dest` (ENOSPC, EROFS, a folder that is a file...) as OutputError."""
    try:
        yield
    except OSError as exc:
        raise OutputError.from_os_error(dest, exc) from None


def new_temporary(folder: Path, *, prefix: str, suffix: str) -> tuple[int, str]:
    """Create a new file in `folder` with a random name, opened for writing; (fd, path).

    Unlike tempfile.mkstemp (always 0600) the file gets the mode the user's
    umask gives a new file: saved images are theirs to share.
    """
    for _ in range(100):
        path = Path(folder) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666), str(path)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {folder}")


_O_BINARY: Final = getattr(os, "O_BINARY", 0)  # Windows: no newline translation


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _replace_durably(tmp: Path, dest: Path) -> None:
    """Rename the finished file over `dest`; fsync the folder so the rename survives a crash."""
    tmp.replace(dest)
    try:
        dir_fd = os.open(dest.parent, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open a directory; the rename itself is done
    try:
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
