"""`batcher status`, `batcher items` and `batcher db`: reading and maintaining the ledger."""

from __future__ import annotations

import json

import click

from batcher import library
from batcher.cli.options import db_option
from batcher.ledger import STATES, display_url
from batcher.reports.items import items_json
from batcher.reports.status import status_json
from batcher.settings import database_url
from batcher.terminal import console as output
from batcher.terminal import ledger_views


@click.command()
@click.argument("batch_name", required=False, metavar="[BATCH]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the documented shape).")
@db_option
def status(batch_name: str | None, as_json: bool, db_url: str | None) -> None:
    """Counts per state, credits so far and review decisions (images picked and
    rejected), per batch (all batches, or BATCH)."""
    report = library.status(batch_name, db=db_url)
    if as_json:
        if not report.ledger_found:
            ledger_views.missing_ledger(display_url(database_url(db_url)))
        output.result(json.dumps(status_json(report), indent=2))
    else:
        ledger_views.print_status(report, display_url(database_url(db_url)))


@click.command()
@click.argument("batch_name", metavar="BATCH")
@click.option(
    "--state",
    type=click.Choice(STATES),
    help="Only the items in this state.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@db_option
def items(batch_name: str, state: str | None, as_json: bool, db_url: str | None) -> None:
    """The items of BATCH: key, state, prompt, model, project id, credits, files, and
    why each one failed or is in doubt.

    \b
    JSON: {"batch", "state", "items": [{"key", "state", "prompt", "model",
    "resolution", "image_count", "name", "project_id", "credits_charged",
    "credits_refunded", "credits_net", "files", "file_details": [{"path",
    "sha256", "bytes", "width", "height"}], "reason", "resume_with"}]}
    """
    report = library.items(batch_name, state, db=db_url)
    if as_json:
        output.result(json.dumps(items_json(report), indent=2, ensure_ascii=False))
    else:
        ledger_views.print_items(report)


@click.group()
def db() -> None:
    """Maintain the ledger database."""


@db.command()
@db_option
def upgrade(db_url: str | None) -> None:
    """Apply pending migrations (run and the other commands also do this on start)."""
    ledger_views.upgraded(library.db_upgrade(db=db_url))


COMMANDS: list[click.Command] = [status, items, db]
