"""The canary (DESIGN.md, "Canary"), as pure logic: which items go first, what
they cost against the estimate, what the rest will cost at the charges just
seen, and whether that still fits the budget and the account's balance.

`batcher.run.canary_run` does the I/O around this: it runs the chosen items,
reads the ledger and the account, and asks the caller to go on.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from batcher.errors import ConfigError
from batcher.jobfile.items import ItemSettings
from batcher.jobfile.pricing import Kind, KindEstimate, Prices, SeenPrice, kind_text
from batcher.ledger import KindItems, display_url
from batcher.run.state import RunCounters
from batcher.settings import DEFAULT_BASE_URL, DEFAULT_DATABASE_URL, SANDBOX_ENDPOINT

__all__ = [
    "STOP_CANARY",
    "STOP_CANARY_FAILED",
    "CanaryReport",
    "KindCharge",
    "check_canary",
    "choose_canary",
    "continue_command",
    "kind_settings",
    "merge_counters",
    "re_estimate",
]

# Sending paused after the canary: nobody said yes (exit 0, the report says how
# to continue).
STOP_CANARY: Final = "canary"
# A canary item failed or is in doubt: the rest is not sent (exit 1).
STOP_CANARY_FAILED: Final = "canary_failed"


def check_canary(count: int | None, *, wait: bool) -> None:
    """ConfigError (exit 2) for a canary that cannot be run as asked."""
    if count is None:
        return
    if count < 1:
        raise ConfigError(f"canary must be at least 1 item, not {count}")
    if not wait:
        raise ConfigError(
            "--canary waits for its renders to report their cost; it cannot be used with --no-wait"
        )


def continue_command(
    batch: str,
    db_url: str,
    out: Path | None,
    endpoint_label: str,
    base_url: str,
    *,
    download: bool = True,
) -> str:
    """The command that sends the rest of the batch later, as the user would type it
    (the ledger's password hidden), with the flags that say where things are."""
    words = ["batcher", "resume", batch]
    if db_url != DEFAULT_DATABASE_URL:
        words += ["--db", display_url(db_url)]
    if out is not None:
        words += ["--out", str(out)]
    if not download:
        words.append("--no-download")
    if endpoint_label == SANDBOX_ENDPOINT:
        words.append("--sandbox")
    elif base_url != DEFAULT_BASE_URL:
        words += ["--base-url", base_url]
    return shlex.join(words)


def choose_canary(kinds: Sequence[KindItems], n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The pending items to send first so that N items (complete ones included)
    cover every kind once before any kind repeats: each time, the kind with the
    fewest items so far (first in job order on a tie) gives its next pending item.

    Returned as (firsts, repeats): the items of kinds not covered yet, then the
    others. The runner sends the repeats only once the firsts were created, so
    that even concurrent creates reach the API one of each kind first. `kinds`
    come in job order, each with enough pending ids (`n` of them).
    """
    have = [kind.complete for kind in kinds]
    taken = [0] * len(kinds)
    left = n - sum(have)
    firsts: list[int] = []
    repeats: list[int] = []
    while left > 0:
        open_kinds = [i for i, kind in enumerate(kinds) if taken[i] < len(kind.pending_ids)]
        if not open_kinds:
            break
        index = min(open_kinds, key=lambda i: (have[i], i))
        (repeats if have[index] else firsts).append(kinds[index].pending_ids[taken[index]])
        taken[index] += 1
        have[index] += 1
        left -= 1
    return tuple(firsts), tuple(repeats)


def kind_settings(kind: Kind) -> ItemSettings:
    """Settings that price like every item of `kind` (estimates read only these)."""
    model, resolution, image_count = kind
    return ItemSettings(model, resolution, "", "", image_count)


@dataclass(frozen=True, slots=True)
class KindCharge:
    """One kind of the batch: its estimate before the canary, its real charge, and
    what its remaining items will cost."""

    kind: Kind
    canary_items: int  # items of this kind the canary covers (complete ones included)
    estimate: KindEstimate  # one item's, before the canary
    charged: int | None  # one item's real charge, as last seen; None: not seen yet
    remaining: int  # pending items
    remaining_credits: int  # their re-estimate
    remaining_basis: KindEstimate  # what the re-estimate of one item rests on

    @property
    def label(self) -> str:
        return kind_text(self.kind)


def re_estimate(
    kinds: Sequence[KindItems],
    canary_counts: Mapping[Kind, int],
    before: Prices,
    seen_now: Mapping[Kind, SeenPrice],
) -> tuple[KindCharge, ...]:
    """Each kind's estimate before the canary against its charge seen now, and its
    pending items re-estimated at that charge (kinds never seen: as before)."""
    after = before.with_seen(seen_now)
    rows: list[KindCharge] = []
    for kind in kinds:
        settings = kind_settings(kind.kind)
        price = after.estimate(settings)
        seen = seen_now.get(kind.kind)
        rows.append(
            KindCharge(
                kind=kind.kind,
                canary_items=canary_counts.get(kind.kind, 0),
                estimate=before.estimate(settings),
                charged=None if seen is None else seen.credits,
                remaining=kind.pending,
                remaining_credits=kind.pending * price.credits,
                remaining_basis=price,
            )
        )
    return tuple(rows)


@dataclass(frozen=True, slots=True)
class CanaryReport:
    """What the canary showed, and whether the rest of the batch may follow."""

    batch: str
    items: int  # canary items (complete ones included)
    kinds: tuple[KindCharge, ...]
    failed: int  # canary items that failed or are in doubt
    out: Path | None  # where the images are (None: --no-download)
    images: tuple[str, ...]  # the canary items' saved files
    gallery: Path | None
    budget_left: int | None  # None: no budget
    balance: int | None  # None: the account could not be read (or was not checked)
    continue_command: str  # what sends the rest later

    @property
    def remaining(self) -> int:
        return sum(kind.remaining for kind in self.kinds)

    @property
    def remaining_credits(self) -> int:
        return sum(kind.remaining_credits for kind in self.kinds)

    @property
    def remaining_lower_bound(self) -> bool:
        """Some remaining kind was never charged and its catalog price is a lower bound."""
        return any(k.remaining and k.remaining_basis.lower_bound for k in self.kinds)

    @property
    def over_budget(self) -> bool:
        return self.budget_left is not None and self.remaining_credits > self.budget_left

    @property
    def over_balance(self) -> bool:
        return self.balance is not None and self.remaining_credits > self.balance

    @property
    def problem(self) -> str | None:
        """Why the rest must not be sent, whatever the user says; None when it may."""
        if self.failed:
            return (
                f"{self.failed} canary item(s) failed or are in doubt: look at them "
                f"(`batcher items {self.batch} --state failed`) before sending the rest"
            )
        cost = f"the remaining {self.remaining} item(s) would cost about {self.remaining_credits}"
        if self.over_budget:
            return (
                f"{cost} credits at the charges just seen, but the budget has "
                f"{self.budget_left} left"
            )
        if self.over_balance:
            return f"{cost} credits at the charges just seen, but the account has {self.balance}"
        return None

    def question(self) -> str:
        """The question asked on a terminal."""
        return (
            f"Continue with the remaining {self.remaining} items "
            f"(about {self.remaining_credits} credits)? [y/N]"
        )


_SUMMED: Final = tuple(
    f.name
    for f in dataclasses.fields(RunCounters)
    if f.type in ("int", int) and f.name not in ("in_flight", "rendering")
)


def merge_counters(first: RunCounters, second: RunCounters) -> RunCounters:
    """The counters of a canary and the run after it, as one run's."""
    merged = RunCounters(**{name: getattr(first, name) + getattr(second, name) for name in _SUMMED})
    merged.started = first.started
    return merged
