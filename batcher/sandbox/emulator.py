"""The emulator's state and rules: one account, its projects, the journal and
the faults, driven by a clock. No I/O happens here: the ASGI layer (app.py)
turns HTTP into calls of `Emulator` and its `Reply` values back into HTTP, so
every rule can be tested directly with a fake clock.

Time is lazy. A project stores when it leaves the queue and when it finishes;
its status is computed from the clock whenever someone asks. The only thing
that must happen *at* a finish time is the refund of a failed render (the
balance changes), so unfinished renders sit in a heap ordered by finish time
and every operation first settles the ones whose time has passed: O(log n)
per render over its life, nothing per request while nothing finishes. The
same heap gives the number of renders in flight and the time until the next
one frees a slot.

All public methods take one lock: the server's event-loop thread calls them
per request, and a test thread may read the journal or change faults at the
same time. The lock is uncontended in the server's own use.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import math
import os
import random
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, Protocol
from urllib.parse import parse_qs

from batcher.jobfile.catalog import Catalog, load_catalog
from batcher.jobfile.items import ItemSettings
from batcher.sandbox.config import HONEST, SandboxConfig

Headers = tuple[tuple[bytes, bytes], ...]

QUEUED_SHARE: Final = 0.25  # of a render's duration spent `queued` before `rendering`
SERVER_ERRORS: Final = (500, 502, 503)
RENDER_ERROR: Final = {
    "code": "generation_failed",
    "message": "The image could not be generated. The credits were refunded.",
}


class Clock(Protocol):
    """Where time comes from: monotonic for durations, wall for timestamps and URL expiry."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class Reply(NamedTuple):
    """What to answer: a status and a JSON body, or `drop` the connection unanswered."""

    status: int
    body: bytes = b""
    headers: Headers = ()
    drop: bool = False


@dataclass(frozen=True, slots=True)
class ImageJob:
    """A download the emulator has authorised: what the image must show."""

    project_id: str
    index: int
    image_count: int
    prompt: str
    aspect_ratio: str
    model: str


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One accepted create, as the sandbox saw it."""

    id: str
    time: str  # ISO 8601 UTC, when the create was accepted
    name: str | None
    body: Mapping[str, Any]  # the request body as sent
    model: str  # the model after defaults and deprecated quality_mode
    image_count: int
    credits_charged: int  # at create time; the refund is separate
    credits_refunded: int
    status: str  # now
    enabled: bool
    dropped: bool  # the create's connection was closed without an answer

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "name": self.name,
            "body": dict(self.body),
            "model": self.model,
            "image_count": self.image_count,
            "credits_charged": self.credits_charged,
            "credits_refunded": self.credits_refunded,
            "status": self.status,
            "enabled": self.enabled,
            "dropped": self.dropped,
        }


@dataclass(frozen=True, slots=True)
class SandboxStats:
    """Counters since start. `requests` maps "METHOD /route" to {status code: count};
    a dropped create counts under the status "dropped"."""

    requests: Mapping[str, Mapping[str, int]]
    creates: int  # accepted creates, dropped ones included
    dropped: int
    in_flight: int  # renders queued or rendering now
    credits: int  # the account balance now
    credits_charged: int
    credits_refunded: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": {route: dict(codes) for route, codes in self.requests.items()},
            "creates": self.creates,
            "dropped": self.dropped,
            "in_flight": self.in_flight,
            "credits": self.credits,
            "credits_charged": self.credits_charged,
            "credits_refunded": self.credits_refunded,
        }

    def count(self, route: str, status: int | str | None = None) -> int:
        """Requests to `route`, of one status or all of them."""
        codes = self.requests.get(route, {})
        if status is None:
            return sum(codes.values())
        return codes.get(str(status), 0)


class _Project:
    __slots__ = (
        "aspect_ratio",
        "charge",
        "created_wall",
        "dropped",
        "enabled",
        "fails",
        "finish_at",
        "id",
        "image_count",
        "model",
        "name",
        "prompt",
        "raw",
        "refund",
        "start_at",
    )

    def __init__(
        self,
        project_id: str,
        raw: bytes,
        request: _Request,
        charge: int,
        created_wall: float,
        start_at: float,
        finish_at: float,
        fails: bool,
    ) -> None:
        self.id = project_id
        # The request as sent, kept as bytes: parsed again only when the journal
        # is read, so thousands of projects do not keep thousands of dicts alive
        # for the garbage collector to walk.
        self.raw = raw
        self.name = request.name
        self.prompt = request.prompt
        self.model = request.model
        self.aspect_ratio = request.aspect_ratio
        self.image_count = request.image_count
        self.charge = charge
        self.refund = 0
        self.created_wall = created_wall
        self.start_at = start_at
        self.finish_at = finish_at
        self.fails = fails
        self.enabled = True
        self.dropped = False

    def status(self, now: float) -> str:
        if now >= self.finish_at:
            return "error" if self.fails else "complete"
        return "rendering" if now >= self.start_at else "queued"


class _Request(NamedTuple):
    """A create body that passed validation, with defaults and deprecated fields resolved."""

    prompt: str
    model: str
    resolution: str | None  # as sent; None or `auto` lets the server pick
    aspect_ratio: str
    tool: str
    image_count: int
    name: str | None


class Emulator:
    """The Magic Hour API's behaviour for one account, minus the network."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        catalog: Catalog | None = None,
        clock: Clock | None = None,
    ) -> None:
        config = config or SandboxConfig()
        self.catalog = catalog if catalog is not None else load_catalog(config.catalog)
        self._clock = clock or SystemClock()
        self._monotonic = self._clock.monotonic
        self._wall = self._clock.wall
        self._lock = threading.Lock()
        self._initial = config
        self.config = config
        self._check_tier(config.tier)

        # Separate streams so that, with a seed, each kind of fault depends only
        # on the sequence of requests of its own kind: polls interleaving with
        # creates differently do not change which create is dropped.
        seed = config.seed
        self._rng_create = random.Random(None if seed is None else f"{seed}:create")
        self._rng_poll = random.Random(None if seed is None else f"{seed}:poll")
        self._rng_render = random.Random(None if seed is None else f"{seed}:render")
        # Ids must differ between runs even with a seed (a ledger outlives a sandbox).
        self._ids = _IdMaker()
        self.account_id = self._ids.next(self._wall())

        self._secret = os.urandom(32)  # signs download URLs; new per process like a rotated key
        self._url_generation = 0  # bumped by expire_downloads(): older URLs are expired

        self._credits = config.credits
        self._charged_total = 0
        self._refunded_total = 0
        self._projects: dict[str, _Project] = {}
        self._journal: list[_Project] = []
        self._renders: list[tuple[float, int, _Project]] = []  # heap by finish time
        self._dropped = 0
        self._counters: dict[str, dict[str, int]] = {}

        self._rate: float | None = None
        self._burst = 1.0
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._apply(config, new_limit=True)

    # --- settings -------------------------------------------------------------

    def _check_tier(self, tier: str) -> None:
        if tier not in self.catalog.tiers:
            raise ValueError(f"tier: must be one of {', '.join(self.catalog.tiers)}")

    def _apply(self, config: SandboxConfig, *, new_limit: bool = False) -> None:
        """Copy hot settings into attributes: the request path reads them often."""
        self.config = config
        self.latency = config.latency
        self._auth = b"Bearer " + config.key.encode("utf-8")
        if new_limit or config.rate_limit != self._rate:
            # A changed limit starts with a full bucket; changing another fault
            # leaves the bucket as it is.
            self._rate = config.rate_limit
            self._burst = max(1.0, config.rate_limit or 0.0)  # below 1/s still allows one
            self._tokens = self._burst
            self._tokens_at = self._monotonic()

    def set_faults(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change runtime settings (SandboxConfig field names); ValueError names a bad one."""
        with self._lock:
            config = self.config.with_changes(changes)
            self._check_tier(config.tier)
            self._apply(config)
            return config.runtime_settings()

    def reset_faults(self) -> dict[str, Any]:
        """Back to the settings the sandbox started with."""
        return self.set_faults(self._initial.runtime_settings())

    def faults(self) -> dict[str, Any]:
        with self._lock:
            return self.config.runtime_settings()

    # --- gate: rate limit and auth, for every /v1/ request ---------------------

    def admit(self, authorization: bytes | None) -> Reply | None:
        """None when the request may proceed, else the refusal (429 or 401).

        The rate limit comes first, like a gateway in front of the API: every
        /v1/ request spends a token, even one with a bad key.
        """
        with self._lock:
            rate = self._rate
            if rate is not None:
                now = self._monotonic()
                tokens = self._tokens + (now - self._tokens_at) * rate
                if tokens > self._burst:
                    tokens = self._burst
                self._tokens_at = now
                if tokens < 1.0:
                    self._tokens = tokens
                    return Reply(429, _TOO_MANY, self._retry_after((1.0 - tokens) / rate))
                self._tokens = tokens - 1.0
            if authorization is None or not _bearer_matches(authorization, self._auth):
                return _UNAUTHORIZED
            return None

    def _retry_after(self, honest_seconds: float) -> Headers:
        setting = self.config.retry_after
        if setting is None:
            return ()
        if setting == HONEST:
            value = str(max(1, math.ceil(honest_seconds - 1e-9)))
        else:
            value = str(int(setting)) if float(setting).is_integer() else str(setting)
        return ((b"retry-after", value.encode("ascii")),)

    # --- the API ------------------------------------------------------------------

    def create(self, raw: bytes) -> Reply:
        """POST /v1/ai-image-generator, after `admit`.

        Checks in order: JSON object (400), schema and catalog rules (422), tier
        (403), renders in flight (429), injected 5xx, balance (402); then the
        charge, the project, and maybe a dropped connection. Parsing and
        validation read only the immutable catalog, so they run unlocked.
        """
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _message(400, "Request body must be valid JSON")
        if not isinstance(body, dict):
            return _message(400, "Request body must be a JSON object")
        request = self._validate(body)
        if isinstance(request, Reply):
            return request
        settings = ItemSettings(
            model=request.model,
            resolution=request.resolution,
            aspect_ratio=request.aspect_ratio,
            tool=request.tool,
            image_count=request.image_count,
        )
        with self._lock:
            config = self.config
            tier_problem = self.catalog.tier_problem(settings, config.tier)
            if tier_problem is not None:
                return _message(403, tier_problem)
            charge = self.charge_for(request.model, request.resolution, request.image_count)
            now = self._monotonic()
            self._settle(now)
            limit = config.max_in_flight
            if limit is not None and len(self._renders) >= limit:
                wait = self._renders[0][0] - now if self._renders else 1.0
                return Reply(
                    429,
                    _message_body(f"Too many requests: {limit} renders already in progress"),
                    self._retry_after(wait),
                )
            rng = self._rng_create
            if config.error_rate and rng.random() < config.error_rate:
                status = rng.choice(SERVER_ERRORS)
                return _SERVER_ERROR_REPLIES[status]
            if charge > self._credits:
                return _message(
                    402,
                    f"Not enough credits: this request costs {charge}, "
                    f"the balance is {self._credits}",
                )
            project = self._start(raw, request, charge, now)
            if config.drop_rate and rng.random() < config.drop_rate:
                project.dropped = True
                self._dropped += 1
                return _DROP
        pid = project.id
        return Reply(
            200,
            b'{"id":"%s","credits_charged":%d,"frame_cost":%d}' % (pid.encode(), charge, charge),
        )

    def _start(self, raw: bytes, request: _Request, charge: int, now: float) -> _Project:
        config = self.config
        rng = self._rng_render
        duration = config.render_seconds
        if config.render_jitter and duration:
            duration *= 1.0 + config.render_jitter * (2.0 * rng.random() - 1.0)
        fails = bool(config.render_error_rate) and rng.random() < config.render_error_rate
        wall = self._wall()
        project = _Project(
            self._ids.next(wall),
            raw,
            request,
            charge,
            created_wall=wall,
            start_at=now + duration * QUEUED_SHARE,
            finish_at=now + duration,
            fails=fails,
        )
        self._credits -= charge
        self._charged_total += charge
        self._projects[project.id] = project
        self._journal.append(project)
        heapq.heappush(self._renders, (project.finish_at, len(self._journal), project))
        return project

    def _settle(self, now: float) -> None:
        """Finish every render whose time has come: a failed one is refunded now."""
        renders = self._renders
        while renders and renders[0][0] <= now:
            project = heapq.heappop(renders)[2]
            if project.fails:
                project.refund = project.charge
                self._credits += project.charge
                self._refunded_total += project.charge

    def charge_for(self, model: str, resolution: str | None, image_count: int) -> int:
        """Credits a valid create costs: from-price x image_count x resolution factor x knob.

        `default` is priced at the catalog's default model. With no resolution or
        the deprecated `auto` the server picks the model's lowest, on every tier.
        """
        catalog = self.catalog
        info = catalog.models[model]
        priced = catalog.models.get(catalog.default_model, info) if info.server_picks else info
        if resolution is None or resolution in catalog.deprecated_resolutions:
            resolution = info.lowest_resolution
        amount: float = priced.credits_per_image * image_count
        amount *= priced.resolution_multipliers.get(resolution, 1.0)
        amount *= self.config.charge_factor
        # round() first: 10 * 1.1 is 11.000000000000002 in binary floating point.
        return math.ceil(round(amount, 6))

    def _validate(self, body: dict[str, Any]) -> _Request | Reply:
        """The request schema and the catalog's per-model rules; 422 names the field."""
        catalog = self.catalog
        count = body.get("image_count")
        if count is None:
            return _invalid("image_count", "is required")
        if type(count) is not int:
            return _invalid("image_count", "must be an integer")
        if not 1 <= count <= 16:
            return _invalid("image_count", "must be between 1 and 16")
        style = body.get("style")
        if style is None:
            return _invalid("style", "is required")
        if not isinstance(style, dict):
            return _invalid("style", "must be an object")
        prompt = style.get("prompt")
        if prompt is None:
            return _invalid("style.prompt", "is required")
        if not isinstance(prompt, str):
            return _invalid("style.prompt", "must be a string")
        if not prompt.strip():
            return _invalid("style.prompt", "must not be empty")
        tool = style.get("tool")
        if tool is None:
            tool = catalog.default_tool
        elif not isinstance(tool, str) or tool not in catalog.tools:
            return _invalid("style.tool", _one_of(sorted(catalog.tools)))
        quality_mode = style.get("quality_mode")
        if quality_mode is not None and (
            not isinstance(quality_mode, str) or quality_mode not in catalog.quality_modes
        ):
            return _invalid("style.quality_mode", _one_of(catalog.quality_modes))
        model = body.get("model")
        if model is None:
            model = (
                catalog.quality_modes[quality_mode]
                if quality_mode is not None
                else catalog.default_model
            )
        elif not isinstance(model, str) or model not in catalog.models:
            return _invalid("model", _one_of(catalog.models))
        resolution = body.get("resolution")
        if resolution is not None and (
            not isinstance(resolution, str) or resolution not in catalog.accepted_resolutions
        ):
            return _invalid("resolution", _one_of(catalog.accepted_resolutions))
        aspect_ratio = body.get("aspect_ratio")
        if aspect_ratio is not None and (
            not isinstance(aspect_ratio, str) or aspect_ratio not in catalog.aspect_ratios
        ):
            return _invalid("aspect_ratio", _one_of(catalog.aspect_ratios))
        orientation = body.get("orientation")
        if orientation is not None and (
            not isinstance(orientation, str) or orientation not in catalog.orientations
        ):
            return _invalid("orientation", _one_of(catalog.orientations))
        if aspect_ratio is None:
            aspect_ratio = (
                catalog.orientations[orientation]
                if orientation is not None
                else catalog.default_aspect_ratio
            )
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            return _invalid("name", "must be a string")
        problems = catalog.model_problems(model, resolution, count)
        if problems:
            field, problem = problems[0]
            return _invalid(field, problem)
        return _Request(prompt, model, resolution, aspect_ratio, tool, count, name)

    def project(self, project_id: str, host: str) -> Reply:
        """GET /v1/image-projects/{id}; download URLs point at `host` (this server)."""
        with self._lock:
            rate = self.config.poll_error_rate
            if rate and self._rng_poll.random() < rate:
                return _SERVER_ERROR_REPLIES[self._rng_poll.choice(SERVER_ERRORS)]
            project = self._projects.get(project_id)
            if project is None:
                return _NOT_FOUND
            now = self._monotonic()
            self._settle(now)
            status = project.status(now)
            downloads: list[dict[str, str]] = []
            if status == "complete" and project.enabled:
                downloads = self._issue_downloads(project, host)
            credits = project.charge - project.refund
            document = {
                "id": project.id,
                "name": project.name,
                "status": status,
                "image_count": project.image_count,
                "type": "AI_IMAGE",
                "created_at": _iso(project.created_wall),
                "enabled": project.enabled,
                "credits_charged": credits,
                "total_frame_cost": credits,
                "downloads": downloads,
                "error": RENDER_ERROR if status == "error" else None,
            }
        return Reply(200, _encode(document))

    def _issue_downloads(self, project: _Project, host: str) -> list[dict[str, str]]:
        expires = self._wall() + self.config.download_ttl
        expires_ms = int(expires * 1000)
        expires_at = _iso(expires)
        generation = self._url_generation
        base = f"http://{host}{FILES_PREFIX}{project.id}/"
        downloads = []
        for index in range(project.image_count):
            signature = self._sign(project.id, index, expires_ms, generation)
            url = f"{base}{index}.png?expires={expires_ms}&g={generation}&signature={signature}"
            downloads.append({"url": url, "expires_at": expires_at})
        return downloads

    def _sign(self, project_id: str, index: int, expires_ms: int, generation: int) -> str:
        message = f"{project_id}/{index}/{expires_ms}/{generation}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def delete(self, project_id: str) -> Reply:
        """DELETE /v1/image-projects/{id}: the images go away; the charge stays."""
        with self._lock:
            project = self._projects.get(project_id)
            if project is None:
                return _NOT_FOUND
            project.enabled = False
            return _NO_CONTENT

    def account(self) -> Reply:
        """GET /v1/account."""
        with self._lock:
            self._settle(self._monotonic())
            tier = self.config.tier
            paid = tier != self.catalog.tiers[0]
            document = {
                "id": self.account_id,
                "email": "sandbox@example.com",
                "credits": self._credits,
                "tier": tier,
                "subscription": {"plan": tier, "status": "active"} if paid else None,
            }
        return Reply(200, _encode(document))

    def download(self, path_rest: str, query: bytes) -> Reply | ImageJob:
        """GET /_sandbox/files/{id}/{index}.png?expires&g&signature: no bearer, a signed URL.

        Like a signed S3 or CloudFront URL: a bad signature or an expired URL is
        a 403; a URL of a deleted project is a 404.
        """
        project_id, _, file_name = path_rest.partition("/")
        index_text, dot, extension = file_name.partition(".")
        if not (dot and extension == "png" and index_text.isdigit()):
            return _NOT_FOUND
        index = int(index_text)
        params = parse_qs(query.decode("latin-1"))
        try:
            expires_ms = int(params["expires"][0])
            generation = int(params["g"][0])
            signature = params["signature"][0]
        except (KeyError, ValueError):
            return _message(403, "Missing or malformed signature")
        with self._lock:
            expected = self._sign(project_id, index, expires_ms, generation)
            if not hmac.compare_digest(expected, signature):
                return _message(403, "Signature does not match")
            if generation < self._url_generation or self._wall() * 1000 >= expires_ms:
                return _message(403, "Request has expired")
            project = self._projects.get(project_id)
            if project is None or not project.enabled or index >= project.image_count:
                return _NOT_FOUND
            return ImageJob(
                project.id,
                index,
                project.image_count,
                project.prompt,
                project.aspect_ratio,
                project.model,
            )

    # --- inspection ------------------------------------------------------------------

    def expire_downloads(self) -> None:
        """Every download URL issued so far is expired from now on."""
        with self._lock:
            self._url_generation += 1

    def count(self, route: str, status: int | str) -> None:
        """Count one answered request (the ASGI layer calls this after answering)."""
        with self._lock:
            codes = self._counters.get(route)
            if codes is None:
                codes = self._counters[route] = {}
            key = str(status)
            codes[key] = codes.get(key, 0) + 1

    @property
    def credits(self) -> int:
        """The account balance now, refunds of renders failed so far included."""
        with self._lock:
            self._settle(self._monotonic())
            return self._credits

    def journal(self) -> list[JournalEntry]:
        with self._lock:
            now = self._monotonic()
            self._settle(now)
            return [
                JournalEntry(
                    id=p.id,
                    time=_iso(p.created_wall),
                    name=p.name,
                    body=json.loads(p.raw),
                    model=p.model,
                    image_count=p.image_count,
                    credits_charged=p.charge,
                    credits_refunded=p.refund,
                    status=p.status(now),
                    enabled=p.enabled,
                    dropped=p.dropped,
                )
                for p in self._journal
            ]

    def stats(self) -> SandboxStats:
        with self._lock:
            self._settle(self._monotonic())
            return SandboxStats(
                requests={route: dict(codes) for route, codes in self._counters.items()},
                creates=len(self._journal),
                dropped=self._dropped,
                in_flight=len(self._renders),
                credits=self._credits,
                credits_charged=self._charged_total,
                credits_refunded=self._refunded_total,
            )


FILES_PREFIX: Final = "/_sandbox/files/"


class _IdMaker:
    """Ids shaped like the API's cuids: 'c', time, counter, host fingerprint, randomness.

    25 lowercase base-36 characters, e.g. cm6pvghix03bvyz0zwash6noj. Made once
    per create, so the parts that change slowly are cached.
    """

    def __init__(self) -> None:
        self._counter = random.SystemRandom().randrange(_PAIRS_SQUARED)
        self._random = random.Random()  # seeded from the OS: unique across runs
        digest = hashlib.sha256(f"{os.getpid()}:{socket.gethostname()}".encode()).digest()
        self._fingerprint = _base36(int.from_bytes(digest[:4], "big"), 4)
        self._millis = -1
        self._time_part = ""

    def next(self, wall: float) -> str:
        millis = int(wall * 1000)
        if millis != self._millis:
            self._millis = millis
            self._time_part = "c" + _base36(millis, 8)
        counter = self._counter = (self._counter + 1) % _PAIRS_SQUARED
        return (
            self._time_part
            + _PAIRS[counter // 1296]
            + _PAIRS[counter % 1296]
            + self._fingerprint
            + "".join(self._random.choices(_DIGITS, k=8))
        )


_DIGITS: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
_PAIRS: Final = tuple(a + b for a in _DIGITS for b in _DIGITS)  # 1296 two-digit strings
_PAIRS_SQUARED: Final = len(_PAIRS) ** 2


def _base36(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 36)
        digits.append(_DIGITS[digit])
    return "".join(reversed(digits))


def _bearer_matches(header: bytes, expected: bytes) -> bool:
    # The scheme is case-insensitive (RFC 9110); the key is compared in constant time.
    if header[:7].lower() != b"bearer ":
        return False
    return hmac.compare_digest(b"Bearer " + header[7:].strip(), expected)


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_encode_json = json.JSONEncoder(separators=(",", ":")).encode


def _encode(document: Any) -> bytes:
    return _encode_json(document).encode("utf-8")


def _message_body(message: str) -> bytes:
    return _encode({"message": message})


def _message(status: int, message: str) -> Reply:
    return Reply(status, _message_body(message))


def _invalid(field: str, problem: str) -> Reply:
    return _message(422, f"{field}: {problem}")


def _one_of(choices: Any) -> str:
    return "must be one of " + ", ".join(str(c) for c in choices)


def message_reply(status: int, message: str) -> Reply:
    """A JSON `{"message": ...}` answer, for the ASGI layer's own errors (404, 405...)."""
    return _message(status, message)


_TOO_MANY: Final = _message_body("Too many requests")
_UNAUTHORIZED: Final = _message(401, "Unauthorized")
_NOT_FOUND: Final = _message(404, "Not Found")
_NO_CONTENT: Final = Reply(204)
_DROP: Final = Reply(0, drop=True)
_SERVER_ERROR_REPLIES: Final = {
    500: _message(500, "Internal Server Error"),
    502: _message(502, "Bad Gateway"),
    503: _message(503, "Service Unavailable"),
}
