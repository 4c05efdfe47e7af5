"""`batcher plan` on a terminal: a table per job, its budget, its templated entries.

Plans are built (pure) by `batcher.jobfile.plan`; this turns them into Rich
renderables and prints nothing itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from batcher.jobfile.plan import ModelPlan, Plan
from batcher.jobfile.pricing import BASIS_SEEN

__all__ = ["LOWER_BOUND_NOTE", "budget_line", "entries_lines", "plan_table", "render_plans"]

LOWER_BOUND_NOTE = (
    "≥ marks a lower bound: the server picks the model or resolution, or a resolution "
    "above the model's lowest costs more than its from-price. The real charge is "
    "known only when the API accepts each item."
)


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
            _basis(row),
        )
    return table


def _basis(row: ModelPlan) -> Text:
    """exact, lower bound, or "seen on DATE" when the ledger knows the real charge."""
    if not row.exact:
        return Text("lower bound", style="yellow")
    if row.basis == BASIS_SEEN and row.seen_on is not None:
        return Text(f"seen on {row.seen_on.isoformat()}", style="green")
    return Text("exact")


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


def entries_lines(plan: Plan) -> list[Text]:
    """Each templated entry: its combinations, what they multiply, the first prompts."""
    lines: list[Text] = []
    for entry in plan.entries:
        count = entry.combinations
        combinations = "1 combination" if count == 1 else f"{count:,} combinations"
        if entry.axes:
            combinations += f" ({entry.axes})"
        # Text, not markup: templates and prompts are the user's.
        lines.append(Text(f"template at line {entry.line}: {entry.template}"))
        lines.append(Text(f"  {combinations}; first prompts:"))
        lines.extend(Text(f"    {prompt}", style="dim") for prompt in entry.sample)
    return lines


def render_plans(plans: Sequence[Plan]) -> Group:
    """Every job's table and budget line, a grand total when there are several jobs,
    and the lower-bound note when any estimate is one."""
    parts: list[RenderableType] = []
    for plan in plans:
        parts += [plan_table(plan), budget_line(plan), *entries_lines(plan), Text("")]
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
