"""Review decisions and the gallery's queries, on a real SQLite file and on the
real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, delete

from batcher.errors import ReviewError
from batcher.jobfile.items import ItemSettings, JobItem
from batcher.ledger import (
    BeginSend,
    Created,
    ItemCredits,
    Ledger,
    ReleaseClaims,
    RenderFinished,
    ReviewCounts,
    SavedFile,
)
from batcher.ledger.engine import configure_sqlite
from batcher.ledger.models import Item, utcnow

SETTINGS = ItemSettings("z-image-turbo", "640px", "1:1", "general", 2)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with Ledger.open(ledger_url) as opened:
        yield opened


def _batch(ledger: Ledger, count: int = 3, name: str = "b") -> int:
    batch, _ = ledger.open_batch(name, job_path="job.yaml", job_hash="h", budget=None, settings={})
    items = [
        JobItem(i, f"{name}{i:04d}", f"prompt {i}", SETTINGS, "job.yaml", i + 1)
        for i in range(count)
    ]
    ledger.sync_items(batch.id, items, estimate=lambda s: (10, True), project_name=lambda i: i.key)
    return batch.id


def _ids(ledger: Ledger, batch_id: int) -> dict[str, int]:
    return {item.key: item.id for item in ledger.items(batch_id)}


def _render(
    ledger: Ledger, batch_id: int, item_id: int, project: str, *, state: str, refund: int = 0
) -> None:
    """Send one create for the item and finish its render as `state`."""
    lease = utcnow() + timedelta(seconds=60)
    claimed = ledger.claim(batch_id, "w", states=["pending"], limit=100, lease_until=lease)
    assert item_id in [c.id for c in claimed]
    ledger.apply([BeginSend(item_id, batch_id, "w", reserve=10, budgeted=False)])
    ledger.apply([Created(item_id, batch_id, project, 10, reserved=10, keep_claim=True)])
    files = (f"out/{project}-1.png", f"out/{project}-2.png") if state == "complete" else None
    ledger.apply(
        [RenderFinished(item_id, batch_id, project, state=state, refund=refund, files=files)]
    )
    ledger.apply([ReleaseClaims(tuple(c.id for c in claimed))])


def test_the_latest_decision_per_image_wins_and_clear_removes_it(ledger: Ledger) -> None:
    batch_id = _batch(ledger)
    assert ledger.record_review(batch_id, "b0000", 0, "pick") is not None
    ledger.record_review(batch_id, "b0000", 0, "reject", "  hands are wrong ")
    ledger.record_review(batch_id, "b0000", 1, "pick")
    ledger.record_review(batch_id, "b0001", 0, "reject")
    assert ledger.record_review(batch_id, "b0001", 0, "clear") is None

    latest = ledger.latest_reviews(batch_id)
    assert set(latest) == {("b0000", 0), ("b0000", 1)}
    assert latest["b0000", 0].verdict == "reject"
    assert latest["b0000", 0].note == "hands are wrong"
    assert ledger.review_counts(batch_id) == ReviewCounts(picked=1, rejected=1)


def test_decisions_survive_reopening_the_ledger(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as ledger:
        batch_id = _batch(ledger)
        ledger.record_review(batch_id, "b0002", 1, "reject", "blurry")
    with Ledger.open(ledger_url) as again:
        [review] = again.latest_reviews(batch_id).values()
    assert (review.item_key, review.image, review.verdict, review.note) == (
        "b0002",
        1,
        "reject",
        "blurry",
    )


def test_decisions_are_per_batch(ledger: Ledger) -> None:
    first = _batch(ledger, name="b")
    second = _batch(ledger, name="c")
    ledger.record_review(first, "b0000", 0, "pick")
    assert ledger.latest_reviews(second) == {}
    with pytest.raises(ReviewError, match="no item"):
        ledger.record_review(second, "b0000", 0, "pick")


@pytest.mark.parametrize(
    ("key", "image", "verdict", "message"),
    [
        ("b0000", 0, "love", "unknown verdict"),
        ("nope", 0, "pick", "no item"),
        ("b0000", 2, "pick", "has no image 3"),
        ("b0000", -1, "pick", "has no image 0"),
    ],
)
def test_bad_decisions_are_refused_and_store_nothing(
    ledger: Ledger, key: str, image: int, verdict: str, message: str
) -> None:
    batch_id = _batch(ledger)
    with pytest.raises(ReviewError, match=message):
        ledger.record_review(batch_id, key, image, verdict)
    assert ledger.latest_reviews(batch_id) == {}


def test_reviewed_images_come_with_their_items_in_job_order(ledger: Ledger) -> None:
    batch_id = _batch(ledger)
    ids = _ids(ledger, batch_id)
    _render(ledger, batch_id, ids["b0001"], "p1", state="complete")
    ledger.record_review(batch_id, "b0002", 0, "pick")
    ledger.record_review(batch_id, "b0001", 1, "reject", "too dark")
    ledger.record_review(batch_id, "b0001", 0, "pick")

    rows = ledger.reviewed_images(batch_id)
    assert [(r.item_key, r.image, r.verdict) for r in rows] == [
        ("b0001", 0, "pick"),
        ("b0001", 1, "reject"),
        ("b0002", 0, "pick"),
    ]
    assert rows[1].file == "out/p1-2.png"
    assert rows[1].project_id == "p1"
    assert rows[1].note == "too dark"
    assert rows[2].file is None  # never rendered
    rejected = ledger.reviewed_images(batch_id, verdict="reject")
    assert [(r.item_key, r.image) for r in rejected] == [("b0001", 1)]


def test_item_credits_sum_every_project_of_an_item(ledger: Ledger) -> None:
    batch_id = _batch(ledger)
    ids = _ids(ledger, batch_id)
    # A failed render (refunded) re-created once, then complete: two projects.
    _render(ledger, batch_id, ids["b0000"], "p1", state="pending", refund=10)
    _render(ledger, batch_id, ids["b0000"], "p2", state="complete")
    _render(ledger, batch_id, ids["b0001"], "p3", state="complete")
    credits = ledger.item_credits(batch_id)
    assert credits == {
        "b0000": ItemCredits(charged=20, refunded=10),
        "b0001": ItemCredits(charged=10, refunded=0),
    }
    assert credits["b0000"].net == 10


def test_a_rerun_points_at_the_item_it_redoes(ledger: Ledger, ledger_url: str) -> None:
    batch_id = _batch(ledger, 3)
    ids = _ids(ledger, batch_id)
    ledger.set_redo_of({ids["b0002"]: ids["b0000"]})
    assert ledger.redo_links(batch_id) == {"b0002": "b0000"}
    # Deleting the old item keeps the rerun (the link is set to NULL, not cascaded).
    engine = create_engine(ledger_url)
    if engine.dialect.name == "sqlite":
        configure_sqlite(engine, busy_timeout_s=5)  # foreign keys on, as the ledger has them
    with engine.begin() as conn:
        conn.execute(delete(Item).where(Item.id == ids["b0000"]))
    engine.dispose()
    assert ledger.redo_links(batch_id) == {}
    assert "b0002" in _ids(ledger, batch_id)


def test_item_files_keep_their_details_and_old_rows_still_read(ledger: Ledger) -> None:
    batch_id = _batch(ledger, 2)
    ids = _ids(ledger, batch_id)
    _render(ledger, batch_id, ids["b0000"], "p-old", state="complete")  # paths only
    lease = utcnow() + timedelta(seconds=60)
    ledger.claim(batch_id, "w", states=["pending"], limit=100, lease_until=lease)
    item_id = ids["b0001"]
    ledger.apply([BeginSend(item_id, batch_id, "w", reserve=10, budgeted=False)])
    ledger.apply([Created(item_id, batch_id, "p-new", 10, reserved=10, keep_claim=True)])
    saved = (
        SavedFile("out/new-1.png", "ab" * 32, 1234, 512, 288),
        SavedFile("out/new-2.jpg", "cd" * 32, 999, 512, 288),
    )
    ledger.apply([RenderFinished(item_id, batch_id, "p-new", state="complete", files=saved)])
    records = {item.key: item for item in ledger.items(batch_id)}
    old, new = records["b0000"], records["b0001"]
    assert old.files == ("out/p-old-1.png", "out/p-old-2.png")
    assert old.file_details == (SavedFile("out/p-old-1.png"), SavedFile("out/p-old-2.png"))
    assert new.files == ("out/new-1.png", "out/new-2.jpg") and new.file_details == saved
    ledger.record_review(batch_id, "b0001", 1, "reject")
    [row] = ledger.reviewed_images(batch_id)
    assert row.file == "out/new-2.jpg"


def test_reruns_are_added_with_their_link_and_taken_back_if_unsent(ledger: Ledger) -> None:
    batch_id = _batch(ledger, 2)
    ids = _ids(ledger, batch_id)
    rerun = JobItem(5, "r0000", "prompt 0", SETTINGS, "job.yaml", 1)
    added = ledger.add_items(
        batch_id,
        [rerun],
        estimate=lambda s: (10, True),
        project_name=lambda i: i.key,
        redo_of={"r0000": ids["b0000"]},
    )
    assert (added.added, added.kept, added.dropped) == (1, 0, 0)
    assert ledger.redo_links(batch_id) == {"r0000": "b0000"}
    assert sorted(_ids(ledger, batch_id)) == ["b0000", "b0001", "r0000"]  # the others stay
    again = ledger.add_items(
        batch_id, [rerun], estimate=lambda s: (10, True), project_name=lambda i: i.key, redo_of={}
    )
    assert (again.added, again.kept) == (0, 1)
    # Only never-sent items go: b0001 is sent, r0000 is not.
    lease = utcnow() + timedelta(seconds=60)
    ledger.claim(batch_id, "w", states=["pending"], limit=1, lease_until=lease)
    ledger.apply([BeginSend(ids["b0000"], batch_id, "w", reserve=10, budgeted=False)])
    assert ledger.drop_unsent(batch_id, ["r0000", "b0000"]) == 1
    assert sorted(_ids(ledger, batch_id)) == ["b0000", "b0001"]
