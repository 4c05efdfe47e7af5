"""`run --canary N` on the terminal: what the canary cost per kind against the
estimate, where its images are, the rest re-estimated, and the question."""

from __future__ import annotations

import select
import signal
import sys
import threading
from typing import Final

from rich.table import Table
from rich.text import Text

from batcher.run.canary import CanaryReport
from batcher.terminal import console as output

YES: Final = frozenset({"y", "yes"})
PROMPT_SLICE_S: Final = 0.2  # how often a prompt waiting for an answer looks at signals
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
    """On a terminal, the question (no by default); elsewhere None: nobody to ask.
    Ctrl-C or the end of input at the prompt is no."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    # The event loop's runner holds SIGINT (it only cancels its task, which waits
    # for this prompt): Ctrl-C must reach the prompt itself, from before it shows.
    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGINT, signal.default_int_handler) if main else None
    try:
        output.stderr.print(f"{report.question()} ", end="", markup=False, highlight=False)
        line = _read_line()
    except KeyboardInterrupt:
        line = ""
    finally:
        if before is not None:
            signal.signal(signal.SIGINT, before)
    if not line.endswith("\n"):
        output.stderr.print()  # Ctrl-C or end of input: end the prompt's line
    return line.strip().lower() in YES


def _read_line() -> str:
    """A line of stdin, waiting in short slices: a SIGINT the kernel hands to
    another thread interrupts no blocking read, but is seen between two slices."""
    while not select.select([sys.stdin], [], [], PROMPT_SLICE_S)[0]:
        pass
    return sys.stdin.readline()
