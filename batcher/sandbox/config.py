"""The sandbox's settings: one frozen value with named defaults.

Every knob of the emulator lives here, so the command line, the pytest
fixtures, `POST /_sandbox/faults` and `batcher run --sandbox` all speak the
same field names. `RUNTIME_FIELDS` are the ones a running sandbox lets a test
change; the others (where it listens, its key, its catalog, the starting
balance, the seed, the webhook secret) are fixed at start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Literal
from urllib.parse import urlsplit

SANDBOX_KEY: Final = "sandbox-key"  # the fixed, public key of the emulator's one account
HONEST: Final = "honest"  # retry_after: say when a token or a render slot really frees

RetryAfter = float | Literal["honest"] | None

DEFAULT_CREDITS: Final = 1_000_000
DEFAULT_TIER: Final = "creator"

# Modes of the hostile faults (issue 10). Each is a value of one setting.
BAD_DOWNLOADS: Final = ("empty", "short", "html", "empty-body", "huge")
CREATE_GARBLES: Final = (
    "non-json",
    "no-id",
    "no-credits",
    "string-credits",
    "float-credits",
    "bool-credits",
    "negative-credits",
    "huge-credits",
    "status-204",
    "status-302",
    "slow-drip",
    "endless",
)
# What a garbled GET of a project gives (issue 10, points 8, 9, 11).
POLL_GARBLES: Final = ("non-json", "unknown-status", "endless", "key-echo")
IMAGE_FORMATS: Final = ("png", "jpeg", "webp", "mixed")
HUGE_DOWNLOAD_BYTES: Final = 2 * 1024**3  # far beyond any image; streamed, never held


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Everything the emulator can be told. Defaults are a healthy, fast-ish API.

    Rates are probabilities in [0, 1]; times are seconds. `retry_after` is None
    (429s carry no Retry-After header, like the real API), HONEST (the time
    until a rate token or a render slot frees, rounded up to whole seconds,
    at least 1) or a fixed number of seconds.
    """

    host: str = "127.0.0.1"
    port: int = 0  # 0: the system picks a free port
    key: str = field(default=SANDBOX_KEY, repr=False)
    catalog: str | None = None  # None: $BATCHER_CATALOG, else the packaged catalog
    tier: str = DEFAULT_TIER
    credits: int = DEFAULT_CREDITS  # the account's starting balance
    charge_factor: float = 1.0  # > 1 makes the server charge more than the client estimates
    render_seconds: float = 2.0
    render_jitter: float = 0.2  # each render takes render_seconds * (1 +- jitter), uniform
    render_error_rate: float = 0.0  # renders that end in `error`, refunded
    download_ttl: float = 86_400.0  # download URLs expire this long after the GET that issued them
    latency: float = 0.0  # added to every /v1/ request, an async sleep
    rate_limit: float | None = None  # /v1/ requests per second, token bucket with that burst
    retry_after: RetryAfter = None
    max_in_flight: int | None = None  # renders queued or rendering at once, per account
    error_rate: float = 0.0  # creates answered 500/502/503, nothing created or charged
    poll_error_rate: float = 0.0  # project GETs answered 500/502/503
    drop_rate: float = 0.0  # creates that charge, create, then close the connection unanswered
    # Hostile answers (issue 10): each is paid for, and the journal says so.
    poll_404_rate: float = 0.0  # GETs of a known project answered 404
    surcharge_rate: float = 0.0  # completed renders whose credits_charged rises (x10), charged
    stuck_rate: float = 0.0  # renders that stay `rendering` forever
    cancel_rate: float = 0.0  # renders that end `canceled`, not refunded
    bad_downloads: str | None = None  # one of BAD_DOWNLOADS: what a bad GET/download gives
    bad_download_rate: float = 1.0  # share of complete GETs that get it, when a mode is set
    huge_download_bytes: int = HUGE_DOWNLOAD_BYTES  # the size of a `huge` download
    create_garble: str | None = None  # one of CREATE_GARBLES: a create answer charged, unusable
    create_garble_rate: float = 1.0  # share of accepted creates garbled, when a mode is set
    drip_seconds: float = 5.0  # `slow-drip`: one byte of the answer this often
    poll_garble: str | None = None  # one of POLL_GARBLES: what a garbled project GET gives
    poll_garble_rate: float = 1.0  # share of project GETs garbled, when a mode is set
    image_format: str = "png"  # one of IMAGE_FORMATS: the bytes of a download
    key_revoked: bool = False  # every /v1/ request answers 401, as for a key revoked mid-run
    # Webhooks (DESIGN.md, "Webhooks instead of polls"): off without a URL.
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)  # fixed at start, never shown
    webhook_drop_rate: float = 0.0  # events never sent
    webhook_duplicate_rate: float = 0.0  # events delivered twice
    webhook_foreign_rate: float = 0.0  # renders that also bring an event for another account
    webhook_backoff: float = 1.0  # first retry after this, then doubling: 1, 2, 4, 8 s...
    webhook_attempts: int = 17  # attempts in all (17 at 1 s doubling span about 18 h)
    seed: int | None = None  # makes faults, jitter and render errors reproducible

    def __post_init__(self) -> None:
        problems = config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    def runtime_settings(self) -> dict[str, Any]:
        """The fields a running sandbox may change, with their current values."""
        return {name: getattr(self, name) for name in RUNTIME_FIELDS}

    def with_changes(self, changes: Mapping[str, Any]) -> SandboxConfig:
        """A copy with some runtime fields changed; ValueError names any bad field."""
        unknown = sorted(set(changes) - set(RUNTIME_FIELDS))
        if unknown:
            fixed = sorted(set(unknown) & _ALL_FIELDS)
            if fixed:
                raise ValueError(f"{', '.join(fixed)}: cannot be changed on a running sandbox")
            raise ValueError(
                f"{', '.join(unknown)}: unknown setting; known: {', '.join(RUNTIME_FIELDS)}"
            )
        coerced = {name: _coerce(name, value) for name, value in changes.items()}
        return replace(self, **coerced)


RUNTIME_FIELDS: Final = (
    "tier",
    "charge_factor",
    "render_seconds",
    "render_jitter",
    "render_error_rate",
    "download_ttl",
    "latency",
    "rate_limit",
    "retry_after",
    "max_in_flight",
    "error_rate",
    "poll_error_rate",
    "drop_rate",
    "poll_404_rate",
    "surcharge_rate",
    "stuck_rate",
    "cancel_rate",
    "bad_downloads",
    "bad_download_rate",
    "huge_download_bytes",
    "create_garble",
    "create_garble_rate",
    "drip_seconds",
    "poll_garble",
    "poll_garble_rate",
    "image_format",
    "key_revoked",
    "webhook_url",
    "webhook_drop_rate",
    "webhook_duplicate_rate",
    "webhook_foreign_rate",
    "webhook_backoff",
    "webhook_attempts",
)
_ALL_FIELDS: Final = frozenset(f.name for f in fields(SandboxConfig))
_RATES: Final = (
    "render_error_rate",
    "error_rate",
    "poll_error_rate",
    "drop_rate",
    "render_jitter",
    "poll_404_rate",
    "surcharge_rate",
    "stuck_rate",
    "cancel_rate",
    "bad_download_rate",
    "create_garble_rate",
    "poll_garble_rate",
    "webhook_drop_rate",
    "webhook_duplicate_rate",
    "webhook_foreign_rate",
)
_POSITIVE: Final = ("charge_factor", "rate_limit")  # 0 would make no sense: free, or never
_NUMBERS: Final = frozenset(
    (
        "charge_factor",
        "render_seconds",
        "download_ttl",
        "latency",
        "rate_limit",
        "drip_seconds",
        "webhook_backoff",
        *_RATES,
    )
)
_WHOLE: Final = ("port", "credits", "max_in_flight", "huge_download_bytes", "webhook_attempts")
_CHOICES: Final = {
    "bad_downloads": BAD_DOWNLOADS,
    "create_garble": CREATE_GARBLES,
    "poll_garble": POLL_GARBLES,
    "image_format": IMAGE_FORMATS,
}
# None: the fault is off
_OPTIONAL_CHOICES: Final = ("bad_downloads", "create_garble", "poll_garble")


def parse_retry_after(value: str | float | bool | None) -> RetryAfter:
    """Read a retry_after setting from a flag or JSON: off, HONEST, or seconds."""
    if value is None or value is False:
        return None
    if value is True:
        return HONEST
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", HONEST, "auto", "true"):
            return HONEST
        if text in ("off", "none", "false"):
            return None
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"retry_after: {value!r} is not a number of seconds") from None
    return float(value)


def config_problems(config: SandboxConfig) -> list[str]:
    """Why a config is unusable, field first; empty when it is fine."""
    problems: list[str] = []
    for name in _NUMBERS:
        value: object = getattr(config, name)
        if value is None and name == "rate_limit":
            continue
        if not _is_number(value):
            problems.append(f"{name}: must be a finite number")
            continue
        assert isinstance(value, int | float)
        if name in _RATES and not 0.0 <= value <= 1.0:
            problems.append(f"{name}: must be between 0 and 1")
        elif name in _POSITIVE and value <= 0:
            problems.append(f"{name}: must be greater than 0")
        elif value < 0:
            problems.append(f"{name}: must be 0 or more")
    for name in _WHOLE:
        whole: object = getattr(config, name)
        if whole is None and name == "max_in_flight":
            continue
        if isinstance(whole, bool) or not isinstance(whole, int) or whole < 0:
            problems.append(f"{name}: must be a whole number >= 0")
        elif name == "port" and whole > 65_535:
            problems.append("port: must be at most 65535")
        elif name == "webhook_attempts" and whole < 1:
            problems.append("webhook_attempts: must be at least 1")
    for name, choices in _CHOICES.items():
        choice: object = getattr(config, name)
        if choice is None and name in _OPTIONAL_CHOICES:
            continue
        if choice not in choices:
            problems.append(f"{name}: must be one of {', '.join(choices)}")
    problems.extend(_webhook_problems(config))
    revoked: object = config.key_revoked
    if not isinstance(revoked, bool):
        problems.append("key_revoked: must be true or false")
    retry_after: object = config.retry_after
    if (
        retry_after is not None
        and retry_after != HONEST
        and not (
            isinstance(retry_after, int | float) and _is_number(retry_after) and retry_after >= 0
        )
    ):
        problems.append(f"retry_after: must be {HONEST!r}, a number of seconds >= 0, or None")
    seed: object = config.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        problems.append("seed: must be a whole number")
    key: object = config.key
    if not isinstance(key, str) or not key:
        problems.append("key: must be a non-empty string")
    tier: object = config.tier
    if not isinstance(tier, str):
        problems.append("tier: must be a string")
    return problems


def _webhook_problems(config: SandboxConfig) -> list[str]:
    url: object = config.webhook_url
    secret: object = config.webhook_secret
    problems: list[str] = []
    if secret is not None and (not isinstance(secret, str) or not secret):
        problems.append("webhook_secret: must be a non-empty string")
    if url is None:
        return problems
    if not isinstance(url, str):
        return [*problems, "webhook_url: must be a string"]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"webhook_url: {url!r} is not an http:// or https:// URL")
    if secret is None:
        problems.append("webhook_secret: required with webhook_url (events are signed)")
    return problems


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _coerce(name: str, value: Any) -> Any:
    """JSON has no distinction between 2 and 2.0; the dataclass wants the right kind."""
    if name == "retry_after":
        if isinstance(value, str | bool | int | float) or value is None:
            return parse_retry_after(value)
        raise ValueError(f"retry_after: must be {HONEST!r}, a number of seconds, or null")
    if name in _NUMBERS and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if name in _WHOLE and isinstance(value, float) and value.is_integer():
        return int(value)
    if name in _OPTIONAL_CHOICES and isinstance(value, str) and value.lower() in ("", "off"):
        return None
    if name == "webhook_url" and value == "":
        return None
    return value
