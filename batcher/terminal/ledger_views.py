"""`status`, `items` and `db upgrade` on the terminal: tables on stdout, notes and
warnings on stderr."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from rich.table import Table
from rich.text import Text

from batcher.ledger import STATES, display_url
from batcher.reports.items import ItemsReport
from batcher.reports.status import StatusReport
from batcher.settings import DEFAULT_DATABASE_URL
from batcher.terminal import console as output
from batcher.terminal.tables import print_table

PROMPT_EXCERPT = 48  # on a terminal; elsewhere prompts are printed whole


def missing_ledger(db: str) -> None:
    output.warning(f"no ledger at {db} yet: nothing has run with it")


def print_status(report: StatusReport, db: str) -> None:
    if not report.ledger_found:
        missing_ledger(db)
    if not report.batches:
        output.note("no batches in the ledger yet")
        return
    print_table(status_table(report))
    if report.workers:
        print_table(workers_table(report))
    for hint in status_hints(report, db):
        output.note(hint)
    for row in report.batches:
        if row.stale_leases:
            output.warning(
                f"{row.name}: {row.stale_leases} item(s) are held under expired leases "
                "(their worker stopped); any worker or `resume` picks them up"
            )


def status_hints(report: StatusReport, db: str) -> list[str]:
    """Status shows counts; `items` shows why: one hint per batch with failures or
    items in doubt, with the command."""
    default = display_url(db) == display_url(DEFAULT_DATABASE_URL)
    where = "" if default else f" --db {shlex.quote(db)}"
    hints = []
    for row in report.batches:
        for state, what in (("failed", "failed"), ("unconfirmed", "in doubt")):
            count = row.states.get(state, 0)
            if count:
                hints.append(
                    f"{row.name}: {count:,} item(s) {what}; "
                    f"`batcher items {shlex.quote(row.name)} --state {state}{where}` shows why"
                )
    return hints


def status_table(report: StatusReport) -> Table:
    table = Table(title="batches", title_justify="left")
    table.add_column("batch")
    table.add_column("items", justify="right")
    for state in STATES:
        table.add_column(state, justify="right")
    for column in ("charged", "refunded", "net", "budget"):
        table.add_column(column, justify="right")
    # Review columns only once a batch has been reviewed: the table stays narrow.
    reviewed = any(row.reviews.picked or row.reviews.rejected for row in report.batches)
    if reviewed:
        table.add_column("picked", justify="right")
        table.add_column("rejected", justify="right")
    # The template variables a batch varies by, once some batch has any.
    varied = any(row.var_names for row in report.batches)
    if varied:
        table.add_column("vars")
    # Webhook columns only once a batch has had events or refusals.
    hooked = any(row.webhooks.deliveries or row.webhooks.rejected for row in report.batches)
    if hooked:
        table.add_column("events", justify="right")
        table.add_column("refused", justify="right")
    for row in report.batches:
        reviews = [f"{row.reviews.picked:,}", f"{row.reviews.rejected:,}"] if reviewed else []
        names = [Text(", ".join(row.var_names))] if varied else []
        hooks = [f"{row.webhooks.events:,}", f"{row.webhooks.rejected:,}"] if hooked else []
        table.add_row(
            Text(row.name),
            f"{row.items:,}",
            *(f"{row.states.get(state, 0):,}" for state in STATES),
            f"{row.credits_charged:,}",
            f"{row.credits_refunded:,}",
            f"{row.credits_net:,}",
            "" if row.budget is None else f"{row.budget:,}",
            *reviews,
            *names,
            *hooks,
        )
    return table


def workers_table(report: StatusReport) -> Table:
    table = Table(title="workers", title_justify="left")
    for column in ("batch", "worker", "host", "pid", "in flight", "last heartbeat", "state"):
        table.add_column(column)
    for worker in report.workers:
        table.add_row(
            Text(worker.batch),
            worker.id[:12],
            Text(worker.host),
            str(worker.pid),
            str(worker.in_flight),
            f"{worker.heartbeat_age:.0f}s ago",
            "stale" if worker.stale else "live",
        )
    return table


def print_items(report: ItemsReport) -> None:
    if not report.items:
        which = f"in state {report.state!r} " if report.state else ""
        output.note(f"no items {which}in batch {report.batch!r}")
        return
    print_table(items_table(report, fit=output.stdout.is_terminal))


def items_table(report: ItemsReport, *, fit: bool) -> Table:
    """`fit`: a terminal, so long prompts and reasons are cut to keep rows on a line."""
    title = f"items of batch {report.batch}" + (f" ({report.state})" if report.state else "")
    table = Table(title=Text(title), title_justify="left")
    table.add_column("key", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("project", no_wrap=True)
    table.add_column("credits", justify="right", no_wrap=True)
    table.add_column(
        "prompt",
        overflow="ellipsis" if fit else "ignore",
        no_wrap=fit,
        max_width=PROMPT_EXCERPT if fit else None,
    )
    # A vars column only when some item is a template's combination.
    with_vars = any(item.vars for item in report.items)
    if with_vars:
        table.add_column("vars", overflow="fold" if fit else "ignore")
    table.add_column("reason", overflow="fold" if fit else "ignore")
    table.add_column("files", justify="right" if fit else "left", no_wrap=True)
    for item in report.items:
        shown_vars = [Text(vars_text(item.vars))] if with_vars else []
        # User text goes in as Text (never read as markup), on one line.
        table.add_row(
            item.key,
            item.state,
            Text(item.model),
            Text(item.project_id or "-"),
            f"{item.credits_net:,}",
            Text(" ".join(item.prompt.split())),
            *shown_vars,
            Text(item.reason or ""),
            str(len(item.files)) if fit else " ".join(item.files) or "-",
        )
    return table


def vars_text(values: Mapping[str, str | int]) -> str:
    """An item's vars on one line: `color=red model=flux-schnell`."""
    return " ".join(f"{name}={' '.join(str(value).split())}" for name, value in values.items())


def upgraded(db: str) -> None:
    output.note(f"ledger {db} is up to date")
