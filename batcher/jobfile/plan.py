"""What a job will cost before anything is sent: items, images and credits per model.

Estimates are the catalog's from-price times image_count. They are exact only for a
model's lowest resolution (or a resolution with a known multiplier); `default`,
`auto`, no resolution, or a higher resolution make the estimate a lower bound,
and the plan says so on the row and on the totals. Building a plan is pure;
the renderers turn plans into a Rich table or a JSON document and print nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from batcher.jobfile.catalog import Catalog, Estimate
from batcher.jobfile.items import ItemSettings
from batcher.jobfile.loader import JobSpec

__all__ = ["ModelPlan", "Plan", "build_plan", "plan_document", "render_plans"]

LOWER_BOUND_NOTE = (
    "≥ marks a lower bound: the server picks the model or resolution, or a resolution "
    "above the model's lowest costs more than its from-price. The real charge is "
    "known only when the API accepts each item."
)


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
    """Sum a job's items per model. Streams the items; keeps one counter per settings."""
    # Items share interned settings, so a few dictionary entries cover 100,000 items.
    per_settings: dict[ItemSettings, int] = {}
    for item in job.items():
        settings = item.settings
        per_settings[settings] = per_settings.get(settings, 0) + 1
    totals: dict[str, list[int]] = {}  # model -> [items, images, credits, exact]
    for settings, count in per_settings.items():
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
    return Plan(file=job.path, batch=job.name, budget=job.budget, models=rows)


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
            }
            for plan in plans
        ],
        "total_items": sum(plan.items for plan in plans),
        "total_images": sum(plan.images for plan in plans),
        "total_estimated_credits": sum(plan.estimated_credits for plan in plans),
    }


def _credits(amount: int, exact: bool) -> str:
    return f"{amount:,}" if exact else f"≥ {amount:,}"


def plan_table(plan: Plan) -> Table:
    table = Table(
        # Text, not str: file and batch names are the user's, never Rich markup.
        title=Text(f"{plan.file} — batch {plan.batch}"),
        title_justify="left",
        show_footer=True,
        footer_style="bold",
    )
    lower = plan.estimate_is_lower_bound
    table.add_column("model", footer="total")
    table.add_column("items", justify="right", footer=f"{plan.items:,}")
    table.add_column("images", justify="right", footer=f"{plan.images:,}")
    table.add_column(
        "est. credits", justify="right", footer=_credits(plan.estimated_credits, not lower)
    )
    table.add_column("estimate", footer="lower bound" if lower else "exact")
    for row in plan.models:
        table.add_row(
            Text(row.model),
            Text(f"{row.items:,}"),
            Text(f"{row.images:,}"),
            Text(_credits(row.estimated_credits, row.exact)),
            Text("exact") if row.exact else Text("lower bound", style="yellow"),
        )
    return table


def budget_line(plan: Plan) -> Text:
    """What the budget means for this plan, said plainly."""
    if plan.budget is None:
        return Text("budget: none set")
    credits = plan.estimated_credits
    at_least = "at least " if plan.estimate_is_lower_bound else ""
    if plan.over_budget:
        return Text(
            f"budget: {plan.budget:,} credits; the estimate ({at_least}{credits:,}) already "
            "exceeds it: the run will stop when the budget is spent",
            style="bold red",
        )
    if plan.estimate_is_lower_bound:
        return Text(
            f"budget: {plan.budget:,} credits; the estimate is at least {credits:,} "
            "(a lower bound: the real cost can be higher). To hold the budget anyway, "
            "the first item of each lower-bound kind is sent alone and the rest "
            "reserve what it was really charged."
        )
    return Text(f"budget: {plan.budget:,} credits; the estimate ({credits:,}) fits")


def render_plans(plans: Sequence[Plan]) -> RenderableType:
    """Every job's table and budget line, a grand total when there are several jobs,
    and the lower-bound note when any estimate is one."""
    parts: list[RenderableType] = []
    for plan in plans:
        parts += [plan_table(plan), budget_line(plan), Text("")]
    if len(plans) > 1:
        lower = any(plan.estimate_is_lower_bound for plan in plans)
        total = sum(plan.estimated_credits for plan in plans)
        parts.append(
            Text(
                f"all jobs: {sum(plan.items for plan in plans):,} items, "
                f"{sum(plan.images for plan in plans):,} images, "
                f"{_credits(total, not lower)} credits estimated",
                style="bold",
            )
        )
    if any(plan.estimate_is_lower_bound for plan in plans):
        parts.append(Text(LOWER_BOUND_NOTE, style="dim"))
    return Group(*parts)
