"""Limits a sending command's settings must respect, checked before anything
is sent or written (pure). Each problem is a ConfigError (exit 2) that names
the setting as its flag.

These are the settings the flags' own types let through or a library caller
can pass: a rate of nan or inf, a budget beyond what the ledger's BIGINT
columns hold, a body cap or render deadline of nothing.
"""

from __future__ import annotations

import math
from typing import Final, Protocol

from batcher.errors import ConfigError
from batcher.settings import MAX_BUDGET

MIN_BODY_BYTES: Final = 1024  # a real API answer is a few hundred bytes


class Limits(Protocol):
    @property
    def rate(self) -> float | None: ...
    @property
    def batch_rate(self) -> float | None: ...
    @property
    def budget(self) -> int | None: ...
    @property
    def max_body_bytes(self) -> int: ...
    @property
    def render_timeout(self) -> float: ...


def check_limits(settings: Limits) -> None:
    """Raise ConfigError naming the first setting that cannot be used."""
    for flag, rate in (("--rate", settings.rate), ("--batch-rate", settings.batch_rate)):
        if rate is not None and not math.isfinite(rate):
            raise ConfigError(f"{flag} must be a finite number of requests per second, not {rate}")
    budget = settings.budget
    if budget is not None and budget > MAX_BUDGET:
        raise ConfigError(
            f"--budget {budget} is beyond any account: at most {MAX_BUDGET:,} credits"
        )
    if settings.max_body_bytes < MIN_BODY_BYTES:
        raise ConfigError(
            f"--max-body-bytes must be at least {MIN_BODY_BYTES} bytes, "
            f"not {settings.max_body_bytes}"
        )
    timeout = settings.render_timeout
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"--render-timeout must be a number of seconds above 0, not {timeout}")
