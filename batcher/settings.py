"""Settings as immutable values with named defaults, and the environment they read."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

VERSION = "0.1.0"  # batcher.__version__; the client sends it in its User-Agent

API_KEY_ENV = "MAGIC_HOUR_API_KEY"
BASE_URL_ENV = "MAGIC_HOUR_BASE_URL"
DATABASE_URL_ENV = "BATCHER_DATABASE_URL"

DEFAULT_BASE_URL = "https://api.magichour.ai"
DEFAULT_DATABASE_URL = "sqlite:///batcher.db"
DEFAULT_CONCURRENCY = 8
DEFAULT_RENDER_RETRIES = 1
# --ledger-hold: seconds a run holds answers in memory while the ledger is away.
DEFAULT_LEDGER_HOLD_S = 300.0
# The most one downloaded image may weigh (`--max-image-bytes`): far above any
# real render (a 4k PNG is tens of MB), low enough that a body that never ends
# cannot fill the disk. A download is streamed and stopped at the cap.
DEFAULT_MAX_IMAGE_BYTES = 100_000_000
# Surviving the night (README, "What survives what"), seconds unless said:
DEFAULT_OUTAGE_TOLERANCE = 600.0  # the API unreachable this long: sending stops
DEFAULT_STALL_TIMEOUT = 900.0  # no item moved forward this long: the run stops
DEFAULT_DOUBT_LIMIT = 3  # creates in doubt in a row: sending stops (the breaker)
DEFAULT_CREATE_TIMEOUT = 180.0  # one create's overall deadline; past it, in doubt
DEFAULT_GRACE = 30.0  # after a first SIGINT/SIGTERM, for creates in flight
DEFAULT_POLL_TIMEOUT = 20.0  # a poll's first read timeout; it adapts from there

# A worker beats every HEARTBEAT_S and its claims expire after LEASE_S without
# one: several missed beats, so a slow but live worker never loses its items.
# The run beats, `status` judges a worker stale by the same figure.
LEASE_S = 60.0
HEARTBEAT_S = 10.0

# Recorded in a batch's settings when it ran against `--sandbox`: that emulator
# lived only for its run, so its project ids mean nothing to any server later.
SANDBOX_ENDPOINT = "sandbox"

# The most one API answer (create, poll, account) may weigh (`--max-body-bytes`):
# real answers are a few hundred bytes; a body that never ends is cut here.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
# The largest credit cap accepted (`budget`, `--budget`): credits are summed in
# BIGINT columns (at most 2**63 - 1); this is far beyond any account, far inside.
MAX_BUDGET = 10**15
# How long a render may take before it is reported and left `submitted` for
# `resume` or `reconcile` to look at again (`--render-timeout`, seconds).
DEFAULT_RENDER_TIMEOUT = 1800.0


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Where the API is and how to authenticate. The key never appears in repr()."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(
        cls, base_url: str | None = None, environ: Mapping[str, str] | None = None
    ) -> ApiConfig:
        env = os.environ if environ is None else environ
        return cls(
            base_url=(base_url or env.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/"),
            api_key=env.get(API_KEY_ENV) or None,
        )


def database_url(flag: str | None, environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return flag or env.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL
