"""Is a `credits_charged` the API sent a charge we can record? (pure)

The ledger sums charges in a BIGINT and budgets against them, so a value is
kept only if it is a whole number of credits that a single create could cost:
not a string, not a boolean, not 5.5, not negative, and not beyond
MAX_PLAUSIBLE_CREDITS (the dearest model at its largest size and count costs a
few thousand; 10**18 is a broken server, not a price).
"""

from __future__ import annotations

import math
from typing import Any, Final

MAX_PLAUSIBLE_CREDITS: Final = 1_000_000


def plausible_credits(value: Any) -> tuple[int | None, str | None]:
    """(credits, None) for a usable charge; (None, why not) otherwise."""
    if value is None:
        return None, "no credits_charged in the answer"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"credits_charged is not a number ({_show(value)})"
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None, f"credits_charged is not a whole number ({_show(value)})"
        value = int(value)
    if value < 0:
        return None, f"credits_charged is negative ({value})"
    if value > MAX_PLAUSIBLE_CREDITS:
        return None, f"credits_charged is implausibly large ({_show(value)})"
    return value, None


def plausible_or_none(value: Any) -> int | None:
    """The charge if usable, else None (a poll: the next one may say better)."""
    return plausible_credits(value)[0]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"
