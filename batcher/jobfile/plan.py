"""What a job will cost before anything is sent: items, images and credits per model.

Estimates are the catalog's from-price times image_count. They are exact only for a
model's lowest resolution (or a resolution with a known multiplier); `default`,
`auto`, no resolution, or a higher resolution make the estimate a lower bound,
and the plan says so on the row and on the totals. Building a plan is pure;
`plan_document` is the `plan --json` document, and `batcher.terminal.plan_view`
draws the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batcher.jobfile.catalog import Catalog, Estimate
from batcher.jobfile.items import ItemSettings
from batcher.jobfile.spec import JobSpec, TemplateSummary

__all__ = ["ModelPlan", "Plan", "build_plan", "plan_document"]


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """One model's share of a job."""

    model: str
    items: int
    images: int
    estimated_credits: int
    exact: bool  # False: `estimated_credits` is a lower bound


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


def build_plan(job: JobSpec, catalog: Catalog) -> Plan:
    """Sum a job's items per model. Streams the items; keeps one counter per price kind."""
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
    for kind, count in counts.items():
        settings = examples[kind]
        estimate: Estimate = catalog.estimate(settings)
        row = totals.setdefault(settings.model, [0, 0, 0, 1])
        row[0] += count
        row[1] += count * settings.image_count
        row[2] += count * estimate.credits
        row[3] &= int(estimate.exact)
    order = {name: index for index, name in enumerate(catalog.models)}
    rows = tuple(
        ModelPlan(model, items, images, credits, bool(exact))
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
