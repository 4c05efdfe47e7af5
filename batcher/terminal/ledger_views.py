"""`status`, `items` and `db upgrade` on the terminal: tables on stdout, notes and
warnings on stderr."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from batcher.ledger import STATES
from batcher.reports.items import ItemsReport
from batcher.reports.status import StatusReport
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
    for row in report.batches:
        if row.stale_leases:
            output.warning(
                f"{row.name}: {row.stale_leases} item(s) are held under expired leases "
                "(their worker stopped); any worker or `resume` picks them up"
            )


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
    # Webhook columns only once a batch has had events or refusals.
    hooked = any(row.webhooks.deliveries or row.webhooks.rejected for row in report.batches)
    if hooked:
        table.add_column("events", justify="right")
        table.add_column("refused", justify="right")
    for row in report.batches:
        reviews = [str(row.reviews.picked), str(row.reviews.rejected)] if reviewed else []
        hooks = [str(row.webhooks.events), str(row.webhooks.rejected)] if hooked else []
        table.add_row(
            Text(row.name),
            str(row.items),
            *(str(row.states.get(state, 0)) for state in STATES),
            str(row.credits_charged),
            str(row.credits_refunded),
            str(row.credits_net),
            "" if row.budget is None else str(row.budget),
            *reviews,
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
    table.add_column("reason", overflow="fold" if fit else "ignore")
    table.add_column("files", justify="right" if fit else "left", no_wrap=True)
    for item in report.items:
        # User text goes in as Text (never read as markup), on one line.
        table.add_row(
            item.key,
            item.state,
            Text(item.model),
            Text(item.project_id or "-"),
            str(item.credits_net),
            Text(" ".join(item.prompt.split())),
            Text(item.reason or ""),
            str(len(item.files)) if fit else " ".join(item.files) or "-",
        )
    return table


def upgraded(db: str) -> None:
    output.note(f"ledger {db} is up to date")
