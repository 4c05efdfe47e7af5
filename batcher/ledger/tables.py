"""The schema's tables as SQLAlchemy Core handles, and the one lock order.

The ledger's queries are Core statements (several are built once and reused
with executemany); the ORM classes in `models` only declare the schema.

Lock order (PostgreSQL), in every transaction that takes more than one row
lock: workers rows first, then item rows in ascending id (`lock_items`,
`lock_items_where`), then the batch row. A worker's heartbeat and its own
group commit touch the same items; a peer recovering a worker and that worker
stopping touch its row and its items; resume's requeue and a running worker's
commits touch items of one batch. Transactions that take row locks in one order
cannot deadlock. Claims never wait (SKIP LOCKED). (SQLite has one writer at a
time: nothing to order.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import ColumnElement, Connection, Table, and_, bindparam, select

from batcher.ledger.models import Batch, CreditEvent, Item, Worker

if TYPE_CHECKING:
    from batcher.jobfile.items import ItemSettings

BATCHES = cast(Table, Batch.__table__)
ITEMS = cast(Table, Item.__table__)
CREDITS = cast(Table, CreditEvent.__table__)
WORKERS = cast(Table, Worker.__table__)

# Item states in which a worker's claim means something (a lease to keep alive).
HELD_STATES = ("pending", "sending", "submitted")

# FOR NO KEY UPDATE: the lock an UPDATE of non-key columns takes anyway, so it
# does not block the KEY SHARE locks that inserting credit rows (foreign keys)
# takes on the same items.
_LOCK_BY_ID = (
    select(ITEMS.c.id)
    .where(ITEMS.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(ITEMS.c.id)
    .with_for_update(key_share=True)
)


def lock_items(conn: Connection, ids: list[int]) -> None:
    """Lock these item rows in id order (PostgreSQL)."""
    if ids:
        conn.execute(_LOCK_BY_ID, {"ids": sorted(set(ids))})


def lock_items_where(conn: Connection, *where: Any) -> list[int]:
    """Lock the item rows matching `where` in id order (PostgreSQL); their ids."""
    query = select(ITEMS.c.id).where(*where).order_by(ITEMS.c.id)
    return list(conn.scalars(query.with_for_update(key_share=True)))


def settings_columns(settings: ItemSettings) -> dict[str, Any]:
    """An item's settings as the `items` columns that hold them."""
    return {
        "model": settings.model,
        "resolution": settings.resolution,
        "aspect_ratio": settings.aspect_ratio,
        "tool": settings.tool,
        "image_count": settings.image_count,
        "name": settings.name,
    }


def of_kind(model: str, resolution: str | None, image_count: int) -> ColumnElement[bool]:
    """Items of one kind, as prices and the canary group them (a null resolution
    is a kind of its own)."""
    return and_(
        ITEMS.c.model == model,
        ITEMS.c.resolution.is_(None) if resolution is None else ITEMS.c.resolution == resolution,
        ITEMS.c.image_count == image_count,
    )
