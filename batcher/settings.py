"""Settings as immutable values with named defaults, and the environment they read."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

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
