"""`batcher rerun` on the terminal: the plan (what would be sent and what it
costs) on stdout, the question and the notes on stderr."""

from __future__ import annotations

import click
from rich.table import Table
from rich.text import Text

from batcher.run.rerun import RerunPlan
from batcher.terminal import console as output
from batcher.terminal.plan_view import LOWER_BOUND_NOTE
from batcher.terminal.tables import print_table

PROMPT_EXCERPT = 48  # on a terminal; elsewhere prompts are printed whole


def _credits(amount: int, exact: bool) -> str:
    return f"{amount:,}" if exact else f"≥ {amount:,}"


def plan_table(plan: RerunPlan, *, fit: bool) -> Table:
    """One row per item the rerun sends: what it redoes, its prompt, settings, cost."""
    table = Table(
        title=Text(f"rerun of batch {plan.batch}: rejected images"),
        title_justify="left",
        show_footer=True,
        footer_style="bold",
    )
    table.add_column("redoes", footer="total", no_wrap=True)
    table.add_column("images", no_wrap=True)
    table.add_column(
        "prompt",
        overflow="ellipsis" if fit else "ignore",
        no_wrap=fit,
        max_width=PROMPT_EXCERPT if fit else None,
    )
    table.add_column("model", no_wrap=True)
    table.add_column("resolution", no_wrap=True)
    table.add_column(
        "est. credits",
        justify="right",
        footer=_credits(plan.credits, plan.exact),
        no_wrap=True,
    )
    for entry in plan.entries:
        settings = entry.settings
        rejected = ", ".join(str(n) for n in entry.images) + " of " + str(settings.image_count)
        table.add_row(
            entry.redoes,
            rejected + (" (left unsent before)" if entry.left_over else ""),
            Text(" ".join(entry.prompt.split())),
            Text(settings.model),
            Text(settings.resolution or "auto"),
            _credits(entry.estimate, entry.exact),
        )
    return table


def print_plan(plan: RerunPlan) -> None:
    """The plan on stdout; what it leaves out and what may stop it on stderr."""
    if plan.entries:
        print_table(plan_table(plan, fit=output.stdout.is_terminal))
        if not plan.exact:
            output.note(LOWER_BOUND_NOTE)
    else:
        output.note(f"nothing to rerun in batch {plan.batch!r}")
    if plan.already_rerun:
        output.note(
            f"{len(plan.already_rerun)} item(s) with a rejected image were rerun already "
            "and are left out (--again reruns them once more)"
        )
    if plan.other_pending:
        output.warning(
            f"batch {plan.batch!r} also has {plan.other_pending} pending item(s) that are "
            f"not reruns: a rerun refuses to send them along (`batcher resume {plan.batch}`)"
        )
    if plan.budget_left is not None and plan.credits > plan.budget_left:
        output.warning(
            f"the rerun is estimated at {plan.credits:,} credits but its budget leaves "
            f"{plan.budget_left:,}: it may stop before the end (raise it with --budget N)"
        )


def dry_run_note() -> None:
    output.note("dry run: nothing was written and nothing was sent")


def ask(plan: RerunPlan) -> bool:
    """Ask on the terminal whether to send the plan; no by default."""
    count = len(plan.entries)
    return click.confirm(
        f"Send {count} item(s) (about {plan.credits:,} credits)?", default=False, err=True
    )


def not_confirmed(command: str) -> None:
    """No terminal to ask on and no --yes: the plan is all this run does."""
    output.note(f"not sent: no terminal to confirm on. To send it: {command}")


def declined() -> None:
    output.note("not sent")
