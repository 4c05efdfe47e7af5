"""Items by price kind (model, resolution, image_count), and their variables:
what the canary picks from, the prices learned from credit rows, and the
variable names `status` shows.

A kind is what the API's price depends on: credits are charged per resolution
bucket and image count, whatever the prompt, style or aspect ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, case, func, select, text

from batcher.jobfile.pricing import Kind, SeenPrice

__all__ = [
    "Kind",
    "KindItems",
    "SeenPrice",
    "batch_kinds",
    "items_by_id",
    "learned_prices",
    "var_names",
]
from batcher.ledger.batches import item_record
from batcher.ledger.tables import CREDITS, ITEMS, of_kind
from batcher.ledger.transactions import Database
from batcher.ledger.values import ItemRecord

_KIND = (ITEMS.c.model, ITEMS.c.resolution, ITEMS.c.image_count)


@dataclass(frozen=True, slots=True)
class KindItems:
    """One kind's items in a batch: the first few pending ones (job order) and counts."""

    kind: Kind
    pending_ids: tuple[int, ...]  # at most the number asked for
    pending: int
    complete: int


def _kind_of(row: Any) -> Kind:
    return (row[0], row[1], int(row[2]))


def learned_prices(db: Database) -> dict[Kind, SeenPrice]:
    """Per kind, the latest charge row of any batch (a refund does not change
    what a create costs). Kinds never charged are absent."""
    latest = (
        select(*_KIND, func.max(CREDITS.c.id).label("latest"))
        .select_from(CREDITS.join(ITEMS, ITEMS.c.id == CREDITS.c.item_id))
        .where(CREDITS.c.kind == "charge")
        .group_by(*_KIND)
        .subquery()
    )
    query = select(
        latest.c.model,
        latest.c.resolution,
        latest.c.image_count,
        CREDITS.c.credits,
        CREDITS.c.created_at,
    ).select_from(latest.join(CREDITS, CREDITS.c.id == latest.c.latest))
    rows = db.read(lambda conn: conn.execute(query).all())
    return {_kind_of(row): SeenPrice(int(row[3]), row[4]) for row in rows}


def batch_kinds(db: Database, batch_id: int, *, per_kind: int) -> list[KindItems]:
    """The batch's kinds in order of first appearance in the job, each with its
    first `per_kind` pending item ids and its pending and complete counts."""
    open_or_done = and_(ITEMS.c.batch_id == batch_id, ITEMS.c.state.in_(["pending", "complete"]))
    pending_count = func.sum(case((ITEMS.c.state == "pending", 1), else_=0))
    complete_count = func.sum(case((ITEMS.c.state == "complete", 1), else_=0))

    def work(conn: Connection) -> list[KindItems]:
        groups = conn.execute(
            select(*_KIND, pending_count, complete_count, func.min(ITEMS.c.ordinal).label("first"))
            .where(open_or_done)
            .group_by(*_KIND)
            .order_by("first")
        ).all()
        found: list[KindItems] = []
        for row in groups:
            model, resolution, image_count = _kind_of(row)
            ids: Sequence[int] = ()
            if per_kind > 0 and row[3]:
                ids = conn.scalars(
                    select(ITEMS.c.id)
                    .where(
                        ITEMS.c.batch_id == batch_id,
                        ITEMS.c.state == "pending",
                        of_kind(model, resolution, image_count),
                    )
                    .order_by(ITEMS.c.ordinal)
                    .limit(per_kind)
                ).all()
            found.append(
                KindItems(
                    (model, resolution, image_count),
                    tuple(int(i) for i in ids),
                    int(row[3] or 0),
                    int(row[4] or 0),
                )
            )
        return found

    return db.read(work)


# A name's place: the first item carrying it (job order), then its position in
# that item's object (JSON keeps the expansion order); the factor keeps the two
# apart for any object a job file can make.
_VAR_NAMES = {
    "sqlite": (
        "SELECT j.key AS name, MIN(i.ordinal * 1000000 + j.id) AS place "
        "FROM items AS i, json_each(i.vars) AS j "
        "WHERE i.batch_id = :batch_id AND i.vars IS NOT NULL GROUP BY j.key ORDER BY place"
    ),
    "postgresql": (
        "SELECT k.name AS name, MIN(i.ordinal * 1000000 + k.position) AS place "
        "FROM items AS i, json_object_keys(i.vars) WITH ORDINALITY AS k(name, position) "
        "WHERE i.batch_id = :batch_id AND i.vars IS NOT NULL GROUP BY k.name ORDER BY place"
    ),
}


def var_names(db: Database, batch_id: int) -> tuple[str, ...]:
    """The variable and matrix names the batch's items carry, in order of first use."""
    query = text(_VAR_NAMES["postgresql" if db.postgres else "sqlite"])
    rows = db.read(lambda conn: conn.execute(query, {"batch_id": batch_id}).all())
    return tuple(str(row[0]) for row in rows)


def items_by_id(db: Database, ids: Sequence[int]) -> list[ItemRecord]:
    """The items of `ids` (any batch), in job order."""
    if not ids:
        return []
    query = select(ITEMS).where(ITEMS.c.id.in_(list(ids))).order_by(ITEMS.c.ordinal)
    return [item_record(row) for row in db.read(lambda conn: conn.execute(query).all())]
