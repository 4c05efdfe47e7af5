"""`batcher recover`: rebuild a batch the ledger lost from its manifest."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batcher import library
from batcher.cli.options import base_url_option, db_option
from batcher.errors import EXIT_FAILURE, EXIT_OK
from batcher.settings import DEFAULT_CONCURRENCY
from batcher.terminal.recover_views import print_recover


@click.command(name="recover")
@click.argument("batch_name", metavar="BATCH")
@click.option(
    "--from-manifest",
    "manifest",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="PATH",
    help="The batch's manifest (out/BATCH/manifest.jsonl).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="Most polls in flight at once.",
)
@db_option
@base_url_option
def recover_command(
    batch_name: str, manifest: Path, concurrency: int, db_url: str | None, base_url: str | None
) -> None:
    """Rebuild BATCH, which the ledger lost (deleted, emptied, another --db), from
    its manifest.

    Every item the manifest lists comes back with its project id, credits and
    state, marked recovered; a rescue file the lost run left is applied; every
    known project is polled again (as `reconcile`). Items the manifest does not
    list are added as pending by the next `batcher run` of the job file; items
    sent without a recorded answer stay in doubt.

    \b
    Needs MAGIC_HOUR_API_KEY. Exit codes: 0 rebuilt and every project answered,
    1 some could not be polled, 2 bad input (a bad manifest line, a batch the
    ledger has).
    """
    report = library.recover(
        batch_name, from_manifest=manifest, concurrency=concurrency, db=db_url, base_url=base_url
    )
    print_recover(report)
    sys.exit(EXIT_OK if report.polled.complete else EXIT_FAILURE)


COMMANDS: list[click.Command] = [recover_command]
