"""The canary's pure parts: which items go first, the re-estimate, when it must
not go on, and the command that continues."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from batcher.errors import ConfigError
from batcher.jobfile.catalog import Catalog
from batcher.jobfile.pricing import BASIS_LOWER_BOUND, BASIS_SEEN, Prices, SeenPrice
from batcher.ledger import KindItems
from batcher.run.canary import (
    CanaryReport,
    KindCharge,
    check_canary,
    choose_canary,
    continue_command,
    merge_counters,
    re_estimate,
)
from batcher.run.state import RunCounters

A = ("z-image-turbo", "640px", 1)
B = ("flux-schnell", "640px", 1)
C = ("seedream-v4", "2k", 4)


def kind(k: tuple[str, str | None, int], ids: list[int], complete: int = 0) -> KindItems:
    return KindItems(k, tuple(ids), len(ids), complete)


def test_every_kind_once_before_any_repeat_in_job_order() -> None:
    kinds = [kind(A, [1, 2, 3]), kind(B, [4, 5]), kind(C, [6])]
    assert choose_canary(kinds, 2) == ((1, 4), ())
    assert choose_canary(kinds, 3) == ((1, 4, 6), ())
    assert choose_canary(kinds, 5) == ((1, 4, 6), (2, 5))
    assert choose_canary(kinds, 50) == ((1, 4, 6), (2, 5, 3))  # everything, no more


def test_complete_items_count_towards_n_and_cover_their_kind() -> None:
    kinds = [kind(A, [1, 2], complete=1), kind(B, [4, 5]), kind(C, [6])]
    assert choose_canary(kinds, 3) == ((4, 6), ())
    assert choose_canary(kinds, 1) == ((), ())
    assert choose_canary([kind(A, [], complete=3)], 2) == ((), ())


def test_the_rest_re_estimated_at_the_charges_seen(catalog: Catalog) -> None:
    kinds = [kind(A, [1, 2, 3]), kind(C, [6])]
    seen = {A: SeenPrice(15, datetime(2026, 12, 2, tzinfo=UTC))}
    rows = re_estimate(kinds, {A: 1}, Prices(catalog), seen)
    a, c = rows
    assert (a.estimate.credits, a.charged, a.remaining_credits) == (5, 15, 45)
    assert a.remaining_basis.basis == BASIS_SEEN
    assert a.remaining_basis.label() == "seen on 2026-12-02"
    assert c.charged is None and c.remaining_basis.basis == BASIS_LOWER_BOUND
    assert c.remaining_credits == 160  # 40 per image, 4 images: a lower bound


def report(rows: tuple[KindCharge, ...], **fields: Any) -> CanaryReport:
    values: dict[str, Any] = {
        "batch": "b",
        "items": 1,
        "kinds": rows,
        "failed": 0,
        "out": None,
        "images": (),
        "gallery": None,
        "budget_left": None,
        "balance": None,
        "continue_command": "batcher resume b",
    }
    values.update(fields)
    return CanaryReport(**values)


def test_the_rest_must_fit_the_budget_and_the_balance(catalog: Catalog) -> None:
    rows = re_estimate([kind(A, [1, 2, 3])], {}, Prices(catalog), {})
    assert report(rows).problem is None
    assert report(rows, budget_left=15, balance=15).problem is None
    assert "budget has 14 left" in str(report(rows, budget_left=14).problem)
    assert "account has 10" in str(report(rows, balance=10).problem)
    assert "1 canary item(s) failed" in str(report(rows, failed=1).problem)
    assert (
        report(rows).question() == "Continue with the remaining 3 items (about 15 credits)? [y/N]"
    )


def test_the_command_that_continues() -> None:
    assert (
        continue_command(
            "b",
            "sqlite:///batcher.db",
            None,
            "https://api.magichour.ai",
            "https://api.magichour.ai",
        )
        == "batcher resume b"
    )
    assert (
        continue_command("my batch", "postgresql://u:secret@h/db", Path("o"), "sandbox", "x")
        == "batcher resume 'my batch' --db 'postgresql://u:***@h/db' --out o --sandbox"
    )
    assert (
        continue_command("b", "sqlite:///batcher.db", None, "http://x", "http://x", download=False)
        == "batcher resume b --no-download --base-url http://x"
    )


def test_a_canary_needs_one_item_and_waiting() -> None:
    check_canary(None, wait=False)
    with pytest.raises(ConfigError):
        check_canary(0, wait=True)
    with pytest.raises(ConfigError, match="--no-wait"):
        check_canary(2, wait=False)


def test_counters_of_the_canary_and_the_rest_add_up() -> None:
    first, second = RunCounters(sent=2, images=2, credits_charged=10), RunCounters(sent=3)
    merged = merge_counters(first, second)
    assert (merged.sent, merged.images, merged.credits_charged) == (5, 2, 10)
    assert merged.started == first.started
