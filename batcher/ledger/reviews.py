"""The ledger's queries for the morning review: decisions on images, and what
the gallery needs beside the items (credits per item, reruns).

Functions over the ledger's `Database`, returning values; `Ledger` exposes them.
Decisions are append-only rows of `reviews`: the latest one per (item,
image) is in force, and a "clear" is recorded like the others, so an image
whose latest row is "clear" has no decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, cast, get_args

from sqlalchemy import Connection, Select, Table, func, insert, select, update

from batcher.errors import ReviewError
from batcher.ledger.models import CreditEvent, Item, Review
from batcher.ledger.transactions import Database
from batcher.ledger.values import files_from_json

ITEMS = cast(Table, Item.__table__)
REVIEWS = cast(Table, Review.__table__)
CREDITS = cast(Table, CreditEvent.__table__)

Verdict = Literal["pick", "reject", "clear"]
VERDICTS: Final[tuple[str, ...]] = get_args(Verdict)
NOTE_LENGTH: Final = 2000  # a note is a reminder, not an essay


@dataclass(frozen=True, slots=True)
class ReviewRecord:
    """A decision in force on one image."""

    item_key: str
    image: int  # the image's index within its item, from 0
    verdict: str  # "pick" or "reject" ("clear" is the absence of a decision)
    note: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class ReviewCounts:
    picked: int
    rejected: int


@dataclass(frozen=True, slots=True)
class ItemCredits:
    charged: int
    refunded: int

    @property
    def net(self) -> int:
        return self.charged - self.refunded


@dataclass(frozen=True, slots=True)
class ReviewedImage:
    """One decision in force with the item it is about: a row of `review --export`."""

    item_key: str
    image: int
    verdict: str
    note: str | None
    at: datetime
    prompt: str
    model: str
    resolution: str | None
    aspect_ratio: str
    tool: str
    project_id: str | None
    file: str | None  # the image's path as the ledger recorded it


def record_review(
    db: Database,
    batch_id: int,
    item_key: str,
    image: int,
    verdict: str,
    note: str | None = None,
    *,
    now: datetime | None = None,
) -> ReviewRecord | None:
    """Store one decision, committed before this returns; the decision now in
    force for that image (None after a "clear").

    Raises ReviewError for an unknown verdict, an item not in the batch or an
    image index the item does not have.
    """
    if verdict not in VERDICTS:
        raise ReviewError(f"unknown verdict {verdict!r} (expected pick, reject or clear)")
    if note is not None:
        note = note.strip()[:NOTE_LENGTH] or None
    at = now or db.clock()

    def work(conn: Connection) -> None:
        row = conn.execute(
            select(ITEMS.c.id, ITEMS.c.image_count).where(
                ITEMS.c.batch_id == batch_id, ITEMS.c.key == item_key
            )
        ).first()
        if row is None:
            raise ReviewError(f"no item {item_key!r} in this batch")
        if not 0 <= image < row.image_count:
            raise ReviewError(f"item {item_key!r} has no image {image + 1}")
        conn.execute(
            insert(REVIEWS).values(
                batch_id=batch_id,
                item_id=row.id,
                image=image,
                verdict=verdict,
                note=note if verdict != "clear" else None,
                created_at=at,
            )
        )

    db.write(work)
    if verdict == "clear":
        return None
    return ReviewRecord(item_key, image, verdict, note, at)


def _latest(batch_id: int) -> Select[Any]:
    newest = (
        select(func.max(REVIEWS.c.id))
        .where(REVIEWS.c.batch_id == batch_id)
        .group_by(REVIEWS.c.item_id, REVIEWS.c.image)
    )
    return (
        select(REVIEWS, ITEMS.c.key.label("item_key"))
        .join(ITEMS, ITEMS.c.id == REVIEWS.c.item_id)
        .where(REVIEWS.c.id.in_(newest), REVIEWS.c.verdict != "clear")
    )


def latest_reviews(db: Database, batch_id: int) -> dict[tuple[str, int], ReviewRecord]:
    """The decisions in force in a batch, by (item key, image index)."""
    rows = db.read(lambda conn: conn.execute(_latest(batch_id)).all())
    return {
        (row.item_key, row.image): ReviewRecord(
            row.item_key, row.image, row.verdict, row.note, row.created_at
        )
        for row in rows
    }


def review_counts(db: Database, batch_id: int) -> ReviewCounts:
    """Images picked and rejected (decisions in force), for `status`."""
    counts = {"pick": 0, "reject": 0}
    for review in latest_reviews(db, batch_id).values():
        counts[review.verdict] += 1
    return ReviewCounts(picked=counts["pick"], rejected=counts["reject"])


def reviewed_images(
    db: Database, batch_id: int, *, verdict: str | None = None
) -> list[ReviewedImage]:
    """The decisions in force with their items, in job order (`review --export`,
    and what `rerun --rejected` reruns with verdict="reject")."""
    latest = _latest(batch_id).subquery()
    query = (
        select(
            latest.c.item_key,
            latest.c.image,
            latest.c.verdict,
            latest.c.note,
            latest.c.created_at,
            ITEMS.c.prompt,
            ITEMS.c.model,
            ITEMS.c.resolution,
            ITEMS.c.aspect_ratio,
            ITEMS.c.tool,
            ITEMS.c.project_id,
            ITEMS.c.files,
        )
        .join(ITEMS, ITEMS.c.id == latest.c.item_id)
        .order_by(ITEMS.c.ordinal, ITEMS.c.id, latest.c.image)
    )
    if verdict is not None:
        query = query.where(latest.c.verdict == verdict)
    rows = db.read(lambda conn: conn.execute(query).all())
    result = []
    for row in rows:
        files = [f.path for f in files_from_json(row.files)]
        result.append(
            ReviewedImage(
                item_key=row.item_key,
                image=row.image,
                verdict=row.verdict,
                note=row.note,
                at=row.created_at,
                prompt=row.prompt,
                model=row.model,
                resolution=row.resolution,
                aspect_ratio=row.aspect_ratio,
                tool=row.tool,
                project_id=row.project_id,
                file=files[row.image] if row.image < len(files) else None,
            )
        )
    return result


def item_credits(db: Database, batch_id: int) -> dict[str, ItemCredits]:
    """Credits charged and refunded per item key, summed over all its projects
    (a re-created render is a second project of the same item)."""
    query = (
        select(ITEMS.c.key, CREDITS.c.kind, func.sum(CREDITS.c.credits))
        .join(ITEMS, ITEMS.c.id == CREDITS.c.item_id)
        .where(CREDITS.c.batch_id == batch_id)
        .group_by(ITEMS.c.key, CREDITS.c.kind)
    )
    sums: dict[str, list[int]] = {}
    for key, kind, total in db.read(lambda conn: conn.execute(query).all()):
        sums.setdefault(key, [0, 0])[0 if kind == "charge" else 1] = int(total)
    return {key: ItemCredits(charged, refunded) for key, (charged, refunded) in sums.items()}


def redo_links(db: Database, batch_id: int) -> dict[str, str]:
    """Reruns in a batch: the new item's key -> the key of the item it redoes."""
    old = ITEMS.alias("old")
    query = (
        select(ITEMS.c.key, old.c.key)
        .join(old, old.c.id == ITEMS.c.redo_of_item_id)
        .where(ITEMS.c.batch_id == batch_id)
    )
    rows = db.read(lambda conn: conn.execute(query).all())
    return {str(row[0]): str(row[1]) for row in rows}


def set_redo_of(db: Database, links: Mapping[int, int]) -> None:
    """Record that each item (id) redoes another (id): what `rerun` writes."""
    if not links:
        return

    def work(conn: Connection) -> None:
        for item_id, old_id in links.items():
            conn.execute(update(ITEMS).where(ITEMS.c.id == item_id).values(redo_of_item_id=old_id))

    db.write(work)
