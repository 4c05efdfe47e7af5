"""The ledger's kind queries on a real SQLite file and on the real PostgreSQL
server: item vars and their names, the canary's candidates, claims limited to
its items, and the prices learned from credit rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from batcher.jobfile.items import ItemSettings, JobItem
from batcher.ledger import BeginSend, Created, Ledger, RenderFinished, utcnow

TURBO = ItemSettings("z-image-turbo", "640px", "1:1", "general", 1)
SEEDREAM = ItemSettings("seedream-v4", "2k", "1:1", "general", 4)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with Ledger.open(ledger_url) as opened:
        yield opened


def _batch(ledger: Ledger, name: str = "b") -> tuple[int, dict[str, int]]:
    batch, _ = ledger.open_batch(name, job_path="j", job_hash="h", budget=None, settings={})
    items = [
        JobItem(0, f"{name}0", "A red mug", TURBO, "j", 3, {"color": "red", "model": "z"}),
        JobItem(1, f"{name}1", "A plain one", SEEDREAM, "j", 4),
        JobItem(2, f"{name}2", "A teal mug", TURBO, "j", 3, {"color": "teal", "size": "s"}),
        JobItem(3, f"{name}3", "Another", SEEDREAM, "j", 5),
    ]
    ledger.sync_items(batch.id, items, estimate=lambda s: (5, True), project_name=lambda i: i.key)
    ids = {record.key: record.id for record in ledger.items(batch.id)}
    return batch.id, ids


def _charge(ledger: Ledger, batch_id: int, item_id: int, project: str, credits: int) -> None:
    lease = utcnow() + timedelta(seconds=60)
    [claimed] = ledger.claim(
        batch_id, "w", states=["pending"], limit=1, lease_until=lease, only=[item_id]
    )
    assert claimed.id == item_id
    ledger.apply([BeginSend(item_id, batch_id, "w", 5, budgeted=False)])
    ledger.apply([Created(item_id, batch_id, project, credits, 5, keep_claim=True)])
    ledger.apply([RenderFinished(item_id, batch_id, project, "complete", files=())])


def test_vars_read_back_and_their_names_in_order_of_first_use(ledger: Ledger) -> None:
    batch_id, _ = _batch(ledger)
    records = {r.key: r for r in ledger.items(batch_id)}
    assert dict(records["b0"].vars) == {"color": "red", "model": "z"}
    assert dict(records["b1"].vars) == {}
    assert ledger.var_names(batch_id) == ("color", "model", "size")


def test_kinds_in_job_order_and_claims_limited_to_the_canary(ledger: Ledger) -> None:
    batch_id, ids = _batch(ledger)
    kinds = ledger.batch_kinds(batch_id, per_kind=1)
    assert [(k.kind, k.pending_ids, k.pending) for k in kinds] == [
        (("z-image-turbo", "640px", 1), (ids["b0"],), 2),
        (("seedream-v4", "2k", 4), (ids["b1"],), 2),
    ]
    lease = utcnow() + timedelta(seconds=60)
    only = [ids["b2"], ids["b3"]]
    claimed = ledger.claim(
        batch_id, "w", states=["pending"], limit=10, lease_until=lease, only=only
    )
    assert [c.id for c in claimed] == only
    assert [r.key for r in ledger.items_by_id([ids["b3"], ids["b0"]])] == ["b0", "b3"]


def test_prices_learned_are_the_latest_charge_per_kind_in_any_batch(ledger: Ledger) -> None:
    one, ids_one = _batch(ledger, "one")
    two, ids_two = _batch(ledger, "two")
    _charge(ledger, one, ids_one["one0"], "p1", 7)
    _charge(ledger, one, ids_one["one1"], "p2", 180)
    _charge(ledger, two, ids_two["two0"], "p3", 9)  # later: the price now
    seen = ledger.learned_prices()
    assert {kind: price.credits for kind, price in seen.items()} == {
        ("z-image-turbo", "640px", 1): 9,
        ("seedream-v4", "2k", 4): 180,
    }
    assert all(price.seen_at.tzinfo is not None for price in seen.values())
    kinds = {k.kind: k for k in ledger.batch_kinds(one, per_kind=5)}
    assert kinds[("z-image-turbo", "640px", 1)].complete == 1
    assert kinds[("z-image-turbo", "640px", 1)].pending_ids == (ids_one["one2"],)
