"""`run --canary N` on the terminal: what the canary cost per kind against the
estimate, where its images are, the rest re-estimated, and the question."""

from __future__ import annotations

import sys
from typing import Final

import click
from rich.table import Table
from rich.text import Text

from batcher.run.canary import CanaryReport
from batcher.terminal import console as output

IMAGES_LISTED: Final = 8  # canary images named one by one; the folder says where the rest are


def print_canary(report: CanaryReport) -> None:
    """The report, on stderr (stdout stays for --json documents)."""
    output.stderr.print(canary_table(report))
    for line in canary_lines(report):
        output.note(line)
    problem = report.problem
    if problem is not None:
        output.error(f"not continuing: {problem}")


def canary_table(report: CanaryReport) -> Table:
    table = Table(title=Text(f"canary of batch {report.batch}"), title_justify="left")
    table.add_column("kind")
    table.add_column("canary", justify="right")
    table.add_column("estimate / item", justify="right")
    table.add_column("charged / item", justify="right")
    table.add_column("remaining", justify="right")
    table.add_column("re-estimate", justify="right")
    for row in report.kinds:
        before = row.estimate
        estimate = f"{'≥ ' if before.lower_bound else ''}{before.credits:,} ({before.label()})"
        charged = "-" if row.charged is None else f"{row.charged:,}"
        again = row.remaining_basis
        table.add_row(
            Text(row.label),
            str(row.canary_items),
            estimate,
            charged,
            f"{row.remaining:,}",
            f"{'≥ ' if again.lower_bound and row.remaining else ''}{row.remaining_credits:,}",
        )
    return table


def canary_lines(report: CanaryReport) -> list[str]:
    lines: list[str] = []
    if report.out is not None:
        shown = ", ".join(report.images[:IMAGES_LISTED])
        more = len(report.images) - IMAGES_LISTED
        listed = f": {shown}" + (f" and {more} more" if more > 0 else "") if shown else ""
        lines.append(f"canary images in {report.out}{listed}")
    if report.gallery is not None:
        lines.append(f"gallery: {report.gallery}")
    at_least = "at least " if report.remaining_lower_bound else "about "
    lines.append(
        f"the rest: {report.remaining:,} item(s), {at_least}{report.remaining_credits:,} "
        "credits at the charges just seen"
    )
    if report.budget_left is not None:
        lines.append(f"budget left: {report.budget_left:,} credits")
    if report.balance is not None:
        lines.append(f"account balance: {report.balance:,} credits")
    return lines


def ask(report: CanaryReport) -> bool | None:
    """On a terminal, the question (no by default); elsewhere None: nobody to ask."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    question = report.question().removesuffix(" [y/N]")
    try:
        return click.confirm(question, default=False, err=True)
    except click.Abort:  # end of input or Ctrl-C at the prompt: no
        return False
