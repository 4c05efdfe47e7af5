"""What one item of a kind is expected to cost, and on what basis.

A kind is what the API's price depends on: (model, resolution, image_count).
The catalog knows from-prices, exact only at a model's lowest resolution; the
ledger knows what creates of a kind were really charged. A charge seen wins
over the catalog, labelled with the day it was seen; a kind never seen keeps
the catalog's figure, exact or a lower bound. Pure: the seen prices come in
as values (the ledger's `learned_prices`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Final

from batcher.jobfile.catalog import Catalog
from batcher.jobfile.items import ItemSettings

__all__ = [
    "BASIS_CATALOG",
    "BASIS_LOWER_BOUND",
    "BASIS_SEEN",
    "Kind",
    "KindEstimate",
    "Prices",
    "SeenPrice",
    "kind_of",
    "kind_text",
]

Kind = tuple[str, str | None, int]  # (model, resolution, image_count)

BASIS_CATALOG: Final = "catalog"  # the catalog's price, exact for this kind
BASIS_LOWER_BOUND: Final = "lower_bound"  # the catalog's from-price: the real one may be higher
BASIS_SEEN: Final = "seen"  # what a create of this kind was really charged


@dataclass(frozen=True, slots=True)
class SeenPrice:
    """The latest charge recorded for one create of a kind."""

    credits: int
    seen_at: datetime  # when it was charged (aware, UTC)


@dataclass(frozen=True, slots=True)
class KindEstimate:
    """The expected charge of one item of a kind."""

    credits: int
    basis: str  # BASIS_*
    seen_on: date | None = None  # with BASIS_SEEN: the day of the charge (UTC)

    @property
    def lower_bound(self) -> bool:
        return self.basis == BASIS_LOWER_BOUND

    def label(self) -> str:
        """How a table names the basis: "exact", "lower bound", "seen on 2026-12-02"."""
        if self.basis == BASIS_SEEN and self.seen_on is not None:
            return f"seen on {self.seen_on.isoformat()}"
        return "lower bound" if self.lower_bound else "exact"


def kind_of(settings: ItemSettings) -> Kind:
    return (settings.model, settings.resolution, settings.image_count)


def kind_text(kind: Kind) -> str:
    """`flux-schnell 1k x1`; a resolution the server picks shows as `auto`."""
    model, resolution, image_count = kind
    return f"{model} {resolution or 'auto'} x{image_count}"


@dataclass(frozen=True)
class Prices:
    """The catalog, corrected by the charges seen per kind."""

    catalog: Catalog
    seen: Mapping[Kind, SeenPrice] = field(default_factory=dict)

    def estimate(self, settings: ItemSettings) -> KindEstimate:
        kind = kind_of(settings)
        found = self.seen.get(kind)
        if found is not None:
            return KindEstimate(found.credits, BASIS_SEEN, found.seen_at.date())
        value = self.catalog.estimate(settings)
        return KindEstimate(value.credits, BASIS_CATALOG if value.exact else BASIS_LOWER_BOUND)

    def with_seen(self, charges: Mapping[Kind, SeenPrice]) -> Prices:
        """These prices with newer charges (a canary's) replacing what was known."""
        return Prices(self.catalog, {**self.seen, **charges})
