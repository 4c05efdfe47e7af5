"""What a job will cost before anything is sent: items, images and credits per model.

Estimates are the catalog's from-price times image_count. They are exact only for a
model's lowest resolution (or a resolution with a known multiplier); `default`,
`auto`, no resolution, or a higher resolution make the estimate a lower bound,
and the plan says so on the row and on the totals. Given the charges a ledger
has seen per kind (`seen`), those replace the catalog's figures, labelled with
the day they were seen (`batcher.jobfile.pricing`). Building a plan is pure;
`plan_document` is the `plan --json` document, and `batcher.terminal.plan_view`
draws the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from batcher.jobfile.catalog import Catalog
from batcher.jobfile.items import ItemSettings
from batcher.jobfile.pricing import (
    BASIS_CATALOG,
    BASIS_LOWER_BOUND,
    BASIS_SEEN,
    Kind,
    KindEstimate,
    Prices,
    SeenPrice,
)
from batcher.jobfile.spec import JobSpec, TemplateSummary

__all__ = ["KindPlan", "ModelPlan", "Plan", "build_plan", "plan_document"]


@dataclass(frozen=True, slots=True)
class KindPlan:
    """The items of one price kind (model, resolution, image_count) and their estimate."""

    resolution: str | None
    image_count: int
    items: int
    estimated_credits: int
    estimate: KindEstimate  # one item's, with its basis


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """One model's share of a job."""

    model: str
    items: int
    images: int
    estimated_credits: int
    exact: bool  # False: `estimated_credits` is a lower bound
    # Per price kind, with the basis of each estimate; not part of equality, so a
    # row compares by its sums.
    kinds: tuple[KindPlan, ...] = field(default=(), compare=False)

    @property
    def basis(self) -> str:
        """lower_bound if any kind's estimate is one, else seen if any was seen, else catalog."""
        bases = {kind.estimate.basis for kind in self.kinds}
        for basis in (BASIS_LOWER_BOUND, BASIS_SEEN):
            if basis in bases:
                return basis
        return BASIS_CATALOG

    @property
    def seen_on(self) -> date | None:
        """The latest day a charge of this model's kinds was seen, if any was."""
        days = [kind.estimate.seen_on for kind in self.kinds if kind.estimate.seen_on]
        return max(days) if days else None


@dataclass(frozen=True, slots=True)
class Plan:
    """The estimate for one job file."""

    file: str
    batch: str
    budget: int | None
    models: tuple[ModelPlan, ...]
    entries: tuple[TemplateSummary, ...] = ()  # the templated entries, in file order

    @property
    def items(self) -> int:
        return sum(row.items for row in self.models)

    @property
    def images(self) -> int:
        return sum(row.images for row in self.models)

    @property
    def estimated_credits(self) -> int:
        return sum(row.estimated_credits for row in self.models)

    @property
    def estimate_is_lower_bound(self) -> bool:
        return not all(row.exact for row in self.models)

    @property
    def over_budget(self) -> bool:
        """True when even the (possibly lower-bound) estimate exceeds the budget."""
        return self.budget is not None and self.estimated_credits > self.budget


def build_plan(
    job: JobSpec, catalog: Catalog, seen: Mapping[Kind, SeenPrice] | None = None
) -> Plan:
    """Sum a job's items per model, at the charges `seen` per kind where there are
    some, else the catalog's. Streams the items; keeps one counter per price kind."""
    prices = Prices(catalog, seen or {})
    # What an estimate depends on; not the settings themselves, which differ item by
    # item when a template names its items.
    counts: dict[tuple[str, str | None, int], int] = {}
    examples: dict[tuple[str, str | None, int], ItemSettings] = {}
    for item in job.items():
        settings = item.settings
        kind = (settings.model, settings.resolution, settings.image_count)
        count = counts.get(kind)
        if count is None:
            counts[kind] = 1
            examples[kind] = settings
        else:
            counts[kind] = count + 1
    totals: dict[str, list[int]] = {}  # model -> [items, images, credits, exact]
    kinds: dict[str, list[KindPlan]] = {}
    for kind, count in counts.items():
        settings = examples[kind]
        estimate = prices.estimate(settings)
        row = totals.setdefault(settings.model, [0, 0, 0, 1])
        row[0] += count
        row[1] += count * settings.image_count
        row[2] += count * estimate.credits
        row[3] &= int(not estimate.lower_bound)
        kinds.setdefault(settings.model, []).append(
            KindPlan(
                settings.resolution,
                settings.image_count,
                count,
                count * estimate.credits,
                estimate,
            )
        )
    order = {name: index for index, name in enumerate(catalog.models)}
    rows = tuple(
        ModelPlan(model, items, images, credits, bool(exact), tuple(kinds[model]))
        for model, (items, images, credits, exact) in sorted(
            totals.items(), key=lambda pair: (order.get(pair[0], len(order)), pair[0])
        )
    )
    return Plan(
        file=job.path, batch=job.name, budget=job.budget, models=rows, entries=job.templates
    )


def plan_document(plans: Sequence[Plan]) -> dict[str, Any]:
    """The `plan --json` document."""
    return {
        "jobs": [
            {
                "file": plan.file,
                "batch": plan.batch,
                "items": plan.items,
                "images": plan.images,
                "estimated_credits": plan.estimated_credits,
                "estimate_is_lower_bound": plan.estimate_is_lower_bound,
                "budget": plan.budget,
                "models": [
                    {
                        "model": row.model,
                        "items": row.items,
                        "images": row.images,
                        "estimated_credits": row.estimated_credits,
                        "exact": row.exact,
                        "basis": row.basis,
                        "seen_on": _day(row.seen_on),
                        "kinds": [
                            {
                                "resolution": kind.resolution,
                                "image_count": kind.image_count,
                                "items": kind.items,
                                "estimated_credits": kind.estimated_credits,
                                "credits_per_item": kind.estimate.credits,
                                "basis": kind.estimate.basis,
                                "seen_on": _day(kind.estimate.seen_on),
                            }
                            for kind in row.kinds
                        ],
                    }
                    for row in plan.models
                ],
                "entries": [
                    {
                        "line": entry.line,
                        "template": entry.template,
                        "combinations": entry.combinations,
                        "vars": list(entry.vars),
                        "sample": list(entry.sample),
                    }
                    for entry in plan.entries
                ],
            }
            for plan in plans
        ],
        "total_items": sum(plan.items for plan in plans),
        "total_images": sum(plan.images for plan in plans),
        "total_estimated_credits": sum(plan.estimated_credits for plan in plans),
    }


def _day(day: date | None) -> str | None:
    return None if day is None else day.isoformat()
