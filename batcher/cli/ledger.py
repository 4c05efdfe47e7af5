"""`batcher status` and `batcher db`: reading and maintaining the ledger."""

from __future__ import annotations

import json

import click
from rich.table import Table

from batcher.cli.options import db_option
from batcher.ledger import STATES, Ledger, display_url
from batcher.reports import status as reports
from batcher.settings import database_url
from batcher.terminal import console as output


@click.command()
@click.argument("batch_name", required=False, metavar="[BATCH]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the documented shape).")
@db_option
def status(batch_name: str | None, as_json: bool, db_url: str | None) -> None:
    """Counts per state and credits so far, per batch (all batches, or BATCH)."""
    url = database_url(db_url)
    ledger, found = Ledger.open_for_report(url)
    if not found:
        output.warning(f"no ledger at {display_url(url)} yet: nothing has run with it")
    with ledger:
        report = reports.status_report(ledger, batch_name)
    if as_json:
        output.result(json.dumps(reports.status_json(report), indent=2))
        return
    if not report.batches:
        output.note("no batches in the ledger yet")
        return
    table = Table(title="batches", title_justify="left")
    table.add_column("batch")
    table.add_column("items", justify="right")
    for state in STATES:
        table.add_column(state, justify="right")
    table.add_column("charged", justify="right")
    table.add_column("refunded", justify="right")
    table.add_column("net", justify="right")
    table.add_column("budget", justify="right")
    for row in report.batches:
        table.add_row(
            row.name,
            str(row.items),
            *(str(row.states.get(state, 0)) for state in STATES),
            str(row.credits_charged),
            str(row.credits_refunded),
            str(row.credits_net),
            "" if row.budget is None else str(row.budget),
        )
    output.stdout.print(table)
    if report.workers:
        workers = Table(title="workers", title_justify="left")
        for column in ("batch", "worker", "host", "pid", "in flight", "last heartbeat", "state"):
            workers.add_column(column)
        for worker in report.workers:
            workers.add_row(
                worker.batch,
                worker.id[:12],
                worker.host,
                str(worker.pid),
                str(worker.in_flight),
                f"{worker.heartbeat_age:.0f}s ago",
                "stale" if worker.stale else "live",
            )
        output.stdout.print(workers)
    for row in report.batches:
        if row.stale_leases:
            output.warning(
                f"{row.name}: {row.stale_leases} item(s) are held under expired leases "
                "(their worker stopped); any worker or `resume` picks them up"
            )


@click.group()
def db() -> None:
    """Maintain the ledger database."""


@db.command()
@db_option
def upgrade(db_url: str | None) -> None:
    """Apply pending migrations (run and the other commands also do this on start)."""
    url = database_url(db_url)
    with Ledger.open(url):
        pass
    output.note(f"ledger {display_url(url)} is up to date")


COMMANDS: list[click.Command] = [status, db]
