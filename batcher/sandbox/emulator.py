"""The emulator's state and rules: one account, its projects, the journal and
the faults, driven by a clock. No I/O happens here: the ASGI layer (app.py)
turns HTTP into calls of `Emulator` and its `Reply` values back into HTTP, so
every rule can be tested directly with a fake clock.

Time is lazy. A project stores when it leaves the queue and when it finishes;
its status is computed from the clock whenever someone asks. What must happen
*at* a finish time (the refund of a failed render, a surcharge, the webhook
event) is done by settling: unfinished renders sit in a heap ordered by
finish time and every operation first settles the ones whose time has passed:
O(log n) per render over its life, nothing per request while nothing
finishes. The same heap gives the number of renders in flight and the time
until the next one frees a slot.

With a webhook URL set, nobody may poll at all, so the server's scheduler
(scheduler.py) calls `tick()` at each render's end time (`tick` says when
to call it next) and sends what it returns. Settling early or late changes
nothing a poll sees: a status is always computed from the clock.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple
from urllib.parse import parse_qs

from batcher.jobfile.catalog import Catalog, load_catalog
from batcher.jobfile.items import ItemSettings
from batcher.sandbox import webhooks
from batcher.sandbox.clock import Clock, SystemClock
from batcher.sandbox.config import BAD_DOWNLOADS, HONEST, SandboxConfig
from batcher.sandbox.faults import (
    SURCHARGE_FACTOR,
    bad_download_count,
    garbled_create,
    garbled_poll,
)
from batcher.sandbox.replies import (
    Headers,
    ImageJob,
    Reply,
    encode,
    message_body,
    message_reply,
)
from batcher.sandbox.webhooks import Outgoing, WebhookDelivery, WebhookOutbox

__all__ = [  # the names other modules and tests import from here
    "FILES_PREFIX",
    "Clock",
    "Emulator",
    "ImageJob",
    "JournalEntry",
    "Reply",
    "SandboxStats",
    "SystemClock",
    "Tick",
    "message_reply",
]

QUEUED_SHARE: Final = 0.25  # of a render's duration spent `queued` before `rendering`
SERVER_ERRORS: Final = (500, 502, 503)
RENDER_ERROR: Final = {
    "code": "generation_failed",
    "message": "The image could not be generated. The credits were refunded.",
}
CANCELED_ERROR: Final = {"code": "canceled", "message": "The render was canceled."}
# How a render ends. STUCK never does: it stays `rendering` for ever.
COMPLETE: Final = "complete"
ERROR: Final = "error"
CANCELED: Final = "canceled"
STUCK: Final = "stuck"
DOWNLOAD_FORMATS: Final = ("png", "jpeg", "webp")  # `mixed` rotates through these
LONGEST_RETRY_AFTER: Final = 3600.0  # an honest Retry-After when only stuck renders hold slots
# What the paid tiers' subscriptions look like in GET /v1/account (prices in cents).
PLAN_PRICES: Final = {"creator": 1_500, "pro": 4_900, "business": 24_900}
BILLING_PERIOD_SECONDS: Final = 30 * 86_400


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One accepted create, as the sandbox saw it."""

    id: str
    time: str  # ISO 8601 UTC, when the create was accepted
    name: str | None
    body: Mapping[str, Any]  # the request body as sent
    model: str  # the model after defaults and deprecated quality_mode
    image_count: int
    credits_charged: int  # at create time; the refund and any surcharge are separate
    credits_refunded: int
    status: str  # now
    enabled: bool
    dropped: bool  # the create's connection was closed without an answer
    garbled: str | None = None  # the create_garble mode its answer was spoiled with
    credits_surcharged: int = 0  # charged later, when the render completed
    outcome: str = COMPLETE  # how the render ends: complete, error, canceled, or stuck

    @property
    def credits_net(self) -> int:
        """What the project cost the account in the end."""
        return self.credits_charged + self.credits_surcharged - self.credits_refunded

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
            "garbled": self.garbled,
            "credits_surcharged": self.credits_surcharged,
            "credits_net": self.credits_net,
            "outcome": self.outcome,
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
    credits_charged: int  # every charge: creates and surcharges
    credits_refunded: int
    rate_limit_429s: int = 0  # /v1/ requests refused by the rate limit (rate_limit)
    render_cap_429s: int = 0  # creates refused for renders in flight (max_in_flight)
    garbled: int = 0  # creates answered with a create_garble mode
    credits_surcharged: int = 0  # the surcharges within credits_charged
    poll_404s: int = 0  # GETs of a known project answered 404 (poll_404_rate)
    bad_download_gets: int = 0  # GETs and webhook payloads given bad downloads
    webhooks: Mapping[str, int] | None = None  # deliveries per state, events, attempts

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": {route: dict(codes) for route, codes in self.requests.items()},
            "creates": self.creates,
            "dropped": self.dropped,
            "in_flight": self.in_flight,
            "credits": self.credits,
            "credits_charged": self.credits_charged,
            "credits_refunded": self.credits_refunded,
            "rate_limit_429s": self.rate_limit_429s,
            "render_cap_429s": self.render_cap_429s,
            "garbled": self.garbled,
            "credits_surcharged": self.credits_surcharged,
            "poll_404s": self.poll_404s,
            "bad_download_gets": self.bad_download_gets,
            "webhooks": dict(self.webhooks or {}),
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
        "ending",
        "finish_at",
        "garble",
        "id",
        "image_count",
        "model",
        "name",
        "number",
        "prompt",
        "raw",
        "refund",
        "start_at",
        "surcharge",
        "surcharged",
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
        ending: str,
        number: int,
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
        self.finish_at = finish_at  # infinite when STUCK
        self.ending = ending
        self.number = number  # its place in the journal: rotates `mixed` image formats
        self.surcharge = 0  # charged when it completes
        self.surcharged = 0  # the surcharge once charged
        self.garble: str | None = None
        self.enabled = True
        self.dropped = False

    def status(self, now: float) -> str:
        if now >= self.finish_at:
            return self.ending
        return "rendering" if now >= self.start_at else "queued"


class Tick(NamedTuple):
    """What `Emulator.tick` found: webhook attempts to make now, and when to tick again."""

    outgoing: list[Outgoing]
    wake_at: float | None  # on the emulator's monotonic clock; None: nothing is due


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
        self._rng_webhook = random.Random(None if seed is None else f"{seed}:webhook")
        # Ids must differ between runs even with a seed (a ledger outlives a sandbox).
        self._ids = _IdMaker()
        self._started_wall = self._wall()
        self.account_id = self._ids.next(self._started_wall)

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
        self._rate_limited = 0
        self._render_capped = 0
        self._garbled = 0
        self._surcharged_total = 0
        self._poll_404s = 0
        self._bad_gets = 0

        # Webhooks: renders that ended since the last tick, the deliveries, and
        # the scheduler's alarm (when it will tick next; `on_wake` moves it sooner).
        self._ended: list[_Project] = []
        self._outbox = WebhookOutbox()
        self._event_host = "127.0.0.1"
        self._wake_at = math.inf
        self.on_wake: Callable[[], None] | None = None

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
        self._webhooks_on = config.webhook_url is not None
        self._auth = b"Bearer " + config.key.encode("utf-8")
        self._revoked = config.key_revoked
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
            settings = config.runtime_settings()
        self._wake()  # a webhook URL may have been set: the scheduler must look again
        return settings

    def reset_faults(self) -> dict[str, Any]:
        """Back to the settings the sandbox started with."""
        return self.set_faults(self._initial.runtime_settings())

    def faults(self) -> dict[str, Any]:
        with self._lock:
            return self.config.runtime_settings()

    @property
    def clock(self) -> Clock:
        return self._clock

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
                    self._rate_limited += 1
                    return Reply(429, _TOO_MANY, self._retry_after((1.0 - tokens) / rate))
                self._tokens = tokens - 1.0
            if (
                self._revoked
                or authorization is None
                or not _bearer_matches(authorization, self._auth)
            ):
                return _UNAUTHORIZED
            return None

    def _retry_after(self, honest_seconds: float) -> Headers:
        setting = self.config.retry_after
        if setting is None:
            return ()
        if setting == HONEST:
            seconds = min(honest_seconds, LONGEST_RETRY_AFTER)
            value = str(max(1, math.ceil(seconds - 1e-9)))
        else:
            value = str(int(setting)) if float(setting).is_integer() else str(setting)
        return ((b"retry-after", value.encode("ascii")),)

    # --- the API ------------------------------------------------------------------

    def create(self, raw: bytes) -> Reply:
        """POST /v1/ai-image-generator, after `admit`.

        Checks in order: JSON object (400), schema and catalog rules (422), tier
        (403), renders in flight (429), injected 5xx, balance (402); then the
        charge, the project, and maybe a dropped connection or a garbled
        answer. Parsing and validation read only the immutable catalog, so
        they run unlocked.
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
                self._render_capped += 1
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
            garble = config.create_garble
            if garble is not None and rng.random() < config.create_garble_rate:
                project.garble = garble
                self._garbled += 1
                return garbled_create(garble, project.id, charge, config.drip_seconds)
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
        # Each draw is made only when its fault is on, so turning a new fault
        # off leaves the seeded sequence of the older ones as it was.
        ending = COMPLETE
        if config.render_error_rate and rng.random() < config.render_error_rate:
            ending = ERROR
        elif config.stuck_rate and rng.random() < config.stuck_rate:
            ending = STUCK
        elif config.cancel_rate and rng.random() < config.cancel_rate:
            ending = CANCELED
        wall = self._wall()
        finish_at = math.inf if ending == STUCK else now + duration
        project = _Project(
            self._ids.next(wall),
            raw,
            request,
            charge,
            created_wall=wall,
            start_at=now + duration * QUEUED_SHARE,
            finish_at=finish_at,
            ending=ending,
            number=len(self._journal),
        )
        if ending == COMPLETE and config.surcharge_rate and rng.random() < config.surcharge_rate:
            project.surcharge = charge * (SURCHARGE_FACTOR - 1)
        self._credits -= charge
        self._charged_total += charge
        self._projects[project.id] = project
        self._journal.append(project)
        heapq.heappush(self._renders, (finish_at, len(self._journal), project))
        if self._webhooks_on and finish_at < self._wake_at:
            self._wake_at = finish_at  # one wake-up per earlier alarm, not one per create
            self._wake()
        return project

    def _settle(self, now: float) -> None:
        """Finish every render whose time has come: a failed one is refunded now,
        a surcharged one charged, and with webhooks on each one is queued for
        its event."""
        renders = self._renders
        while renders and renders[0][0] <= now:
            project = heapq.heappop(renders)[2]
            if project.ending == ERROR:
                project.refund = project.charge
                self._credits += project.charge
                self._refunded_total += project.charge
            elif project.surcharge:
                project.surcharged = project.surcharge
                self._credits -= project.surcharge
                self._charged_total += project.surcharge
                self._surcharged_total += project.surcharge
            if self._webhooks_on:
                self._ended.append(project)

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
            config = self.config
            rng = self._rng_poll
            rate = config.poll_error_rate
            if rate and rng.random() < rate:
                return _SERVER_ERROR_REPLIES[rng.choice(SERVER_ERRORS)]
            project = self._projects.get(project_id)
            if project is None:
                return _NOT_FOUND
            if config.poll_404_rate and rng.random() < config.poll_404_rate:
                self._poll_404s += 1
                return _NOT_FOUND  # as an eventually consistent read, or a delete elsewhere
            now = self._monotonic()
            self._settle(now)
            document = self._document(project, now, host, rng)
            garble = config.poll_garble
            if garble is not None and rng.random() < config.poll_garble_rate:
                return garbled_poll(garble, document, config.key)
        return Reply(200, encode(document))

    def _document(
        self, project: _Project, now: float, host: str, rng: random.Random
    ) -> dict[str, Any]:
        """The GET /v1/image-projects/{id} shape, also a webhook event's payload."""
        status = project.status(now)
        downloads: list[dict[str, str]] = []
        if status == COMPLETE and project.enabled:
            downloads = self._issue_downloads(project, host, rng)
        credits = project.charge + project.surcharged - project.refund
        error = None
        if status == ERROR:
            error = RENDER_ERROR
        elif status == CANCELED:
            error = CANCELED_ERROR
        return {
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
            "error": error,
        }

    def _issue_downloads(
        self, project: _Project, host: str, rng: random.Random
    ) -> list[dict[str, str]]:
        config = self.config
        count = project.image_count
        bad = ""  # a mode that spoils the bodies, signed into the URL so it cannot be undone
        mode = config.bad_downloads
        if mode is not None and rng.random() < config.bad_download_rate:
            self._bad_gets += 1
            listed = bad_download_count(mode, count)
            if listed is None:
                bad = mode
            else:
                count = listed
        expires = self._wall() + config.download_ttl
        expires_ms = int(expires * 1000)
        expires_at = _iso(expires)
        generation = self._url_generation
        base = f"http://{host}{FILES_PREFIX}{project.id}/"
        spoiled = f"&b={bad}" if bad else ""
        downloads = []
        for index in range(count):
            signature = self._sign(project.id, index, expires_ms, generation, bad)
            url = (
                f"{base}{index}.png?expires={expires_ms}&g={generation}{spoiled}"
                f"&signature={signature}"
            )
            downloads.append({"url": url, "expires_at": expires_at})
        return downloads

    def _sign(
        self, project_id: str, index: int, expires_ms: int, generation: int, bad: str = ""
    ) -> str:
        message = f"{project_id}/{index}/{expires_ms}/{generation}"
        if bad:
            message += "/" + bad
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()[:32]

    def delete(self, project_id: str) -> Reply:
        """DELETE /v1/image-projects/{id}: the images go away; the charge stays."""
        with self._lock:
            project = self._projects.get(project_id)
            if project is None:
                return _NOT_FOUND
            project.enabled = False
            return _NO_CONTENT

    def account(self) -> Reply:
        """GET /v1/account, in the shape the official SDK's model requires."""
        with self._lock:
            self._settle(self._monotonic())
            tier = self.config.tier
            paid = tier != self.catalog.tiers[0]
            document = {
                "id": self.account_id,
                "email": "sandbox@example.com",
                "credits": self._credits,
                "tier": tier,
                "subscription": self._subscription(tier) if paid else None,
            }
        return Reply(200, encode(document))

    def _subscription(self, tier: str) -> dict[str, Any]:
        """A monthly plan named after the tier, renewing 30 days after the sandbox started."""
        return {
            "billing_interval": "month",
            "cancel_at_period_end": False,
            "current_period_end": _iso(self._started_wall + BILLING_PERIOD_SECONDS),
            "discount": None,
            "name": tier.capitalize(),
            "price": {"amount": PLAN_PRICES.get(tier, PLAN_PRICES["creator"]), "currency": "usd"},
            "status": "active",
        }

    def download(self, path_rest: str, query: bytes) -> Reply | ImageJob:
        """GET /_sandbox/files/{id}/{index}.png?expires&g[&b]&signature: no bearer, a signed URL.

        Like a signed S3 or CloudFront URL: a bad signature or an expired URL is
        a 403; a URL of a deleted project is a 404. The suffix is always .png;
        the bytes are in `image_format` (a client must read the format from
        the bytes), or spoiled when a bad GET issued the URL (`b`).
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
        bad = params.get("b", [""])[0]
        if bad and bad not in BAD_DOWNLOADS:
            return _message(403, "Signature does not match")
        with self._lock:
            expected = self._sign(project_id, index, expires_ms, generation, bad)
            if not hmac.compare_digest(expected, signature):
                return _message(403, "Signature does not match")
            if generation < self._url_generation or self._wall() * 1000 >= expires_ms:
                return _message(403, "Request has expired")
            project = self._projects.get(project_id)
            if project is None or not project.enabled or index >= project.image_count:
                return _NOT_FOUND
            config = self.config
            image_format = config.image_format
            if image_format not in DOWNLOAD_FORMATS:  # mixed
                image_format = DOWNLOAD_FORMATS[(project.number + index) % len(DOWNLOAD_FORMATS)]
            return ImageJob(
                project.id,
                index,
                project.image_count,
                project.prompt,
                project.aspect_ratio,
                project.model,
                image_format=image_format,
                bad=bad or None,
                huge_bytes=config.huge_download_bytes,
            )

    # --- webhooks -------------------------------------------------------------------

    def set_event_host(self, host: str) -> None:
        """Where the download URLs in webhook payloads point (host:port of this server)."""
        with self._lock:
            self._event_host = host

    def tick(self) -> Tick:
        """Settle what has ended, turn it into events, and hand out the attempts due now.

        The scheduler calls this at `wake_at` (or sooner when woken): the next
        render end while webhooks are on, or the next retry.
        """
        with self._lock:
            now = self._monotonic()
            self._settle(now)
            if self._ended:
                self._publish(now)
            url = self.config.webhook_url
            outgoing: list[Outgoing] = []
            wake_at: float | None = None
            if url is not None:
                outgoing = [
                    Outgoing(delivery.id, url, delivery.body)
                    for delivery in self._outbox.take_due(now)
                ]
                wake_at = self._outbox.next_due()
                renders = self._renders
                if renders and math.isfinite(renders[0][0]):
                    wake_at = renders[0][0] if wake_at is None else min(wake_at, renders[0][0])
            self._wake_at = math.inf if wake_at is None else wake_at
            return Tick(outgoing, wake_at)

    def _publish(self, now: float) -> None:
        """An event for each render that ended, with the faults of the webhook."""
        config = self.config
        rng = self._rng_webhook
        wall = self._wall()
        host = self._event_host
        for project in self._ended:
            event_type = webhooks.COMPLETED if project.ending == COMPLETE else webhooks.ERRORED
            dropped = bool(config.webhook_drop_rate) and rng.random() < config.webhook_drop_rate
            twice = (
                bool(config.webhook_duplicate_rate) and rng.random() < config.webhook_duplicate_rate
            )
            body = webhooks.event_body(event_type, self._document(project, now, host, rng))
            self._outbox.add_event(
                event_type,
                project.id,
                body,
                now=now,
                wall=wall,
                copies=2 if twice else 1,
                dropped=dropped,
            )
            if config.webhook_foreign_rate and rng.random() < config.webhook_foreign_rate:
                foreign_id = self._ids.next(wall)
                document = _foreign_document(foreign_id, event_type, host, wall)
                body = webhooks.event_body(event_type, document)
                self._outbox.add_event(
                    event_type, foreign_id, body, now=now, wall=wall, foreign=True
                )
        self._ended.clear()

    def record_webhook(
        self,
        delivery_id: str,
        timestamp: int,
        status: int | None,
        error: str | None,
        *,
        sent_at: float | None = None,
        sent_wall: float | None = None,
    ) -> None:
        """What one attempt (sent at `sent_at`, default now) got back; a failure
        is due again after its backoff, counted from now."""
        with self._lock:
            config = self.config
            now = self._monotonic()
            self._outbox.record(
                delivery_id,
                now=now,
                sent_at=now if sent_at is None else sent_at,
                sent_wall=self._wall() if sent_wall is None else sent_wall,
                timestamp=timestamp,
                status=status,
                error=error,
                backoff=config.webhook_backoff,
                attempts=config.webhook_attempts,
            )

    def webhooks(self) -> list[WebhookDelivery]:
        """Every delivery so far (dropped ones too) with its attempts."""
        with self._lock:
            return self._outbox.journal()

    @property
    def webhook_secret(self) -> str | None:
        return self.config.webhook_secret

    def _wake(self) -> None:
        wake = self.on_wake
        if wake is not None:
            wake()

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
                    garbled=p.garble,
                    credits_surcharged=p.surcharged,
                    outcome=p.ending,
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
                rate_limit_429s=self._rate_limited,
                render_cap_429s=self._render_capped,
                garbled=self._garbled,
                credits_surcharged=self._surcharged_total,
                poll_404s=self._poll_404s,
                bad_download_gets=self._bad_gets,
                webhooks=self._outbox.counts(),
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


_message_body = message_body
_message = message_reply


def _invalid(field: str, problem: str) -> Reply:
    return _message(422, f"{field}: {problem}")


def _one_of(choices: Any) -> str:
    return "must be one of " + ", ".join(str(c) for c in choices)


def _foreign_document(project_id: str, event_type: str, host: str, wall: float) -> dict[str, Any]:
    """A project of another account, shaped like ours: its URLs open nothing here."""
    done = event_type == webhooks.COMPLETED
    url = f"http://{host}{FILES_PREFIX}{project_id}/0.png?expires=0&g=0&signature=0"
    credits = 5 if done else 0
    return {
        "id": project_id,
        "name": "someone else's image",
        "status": COMPLETE if done else ERROR,
        "image_count": 1,
        "type": "AI_IMAGE",
        "created_at": _iso(wall - 5.0),
        "enabled": True,
        "credits_charged": credits,
        "total_frame_cost": credits,
        "downloads": [{"url": url, "expires_at": _iso(wall + 86_400)}] if done else [],
        "error": None if done else RENDER_ERROR,
    }


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
