"""`batcher validate` and `batcher plan`: offline, no key, nothing sent, nothing written."""

from __future__ import annotations

import click

from batcher import library
from batcher.cli.options import max_items_option
from batcher.errors import EXIT_INPUT
from batcher.jobfile.catalog import CATALOG_ENV
from batcher.settings import DATABASE_URL_ENV
from batcher.terminal import job_views

catalog_option = click.option(
    "--catalog",
    "catalog_path",
    metavar="FILE",
    envvar=CATALOG_ENV,
    help=f"Model catalog file [env {CATALOG_ENV}; default: the packaged one].",
)
job_files_argument = click.argument(
    "job_files", metavar="JOB.yaml...", nargs=-1, required=True, type=click.Path()
)


@click.command()
@job_files_argument
@catalog_option
@max_items_option
@click.pass_context
def validate(
    ctx: click.Context, job_files: tuple[str, ...], catalog_path: str | None, max_items: int | None
) -> None:
    """Check job files and the prompts files they name; print every problem found.

    Prints `ok: FILE (N prompts, batch NAME)` for each good file. Exits 2 if any
    file has a problem. Sends nothing and needs no API key.
    """
    report = library.validate(list(job_files), catalog=catalog_path, max_items=max_items)
    job_views.print_validation(report)
    if not report.ok:
        ctx.exit(EXIT_INPUT)


@click.command()
@job_files_argument
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@catalog_option
@click.option(
    "--batch-name",
    metavar="NAME",
    help="Batch name instead of the job file's name (placeholders {date} and {job} apply).",
)
@max_items_option
@click.option(
    "--db",
    "db_url",
    metavar="URL",
    help=f"A ledger whose charges seen per model, resolution and image count replace the "
    f"catalog's estimates [env {DATABASE_URL_ENV}; default: none, the catalog only].",
)
def plan(
    job_files: tuple[str, ...],
    as_json: bool,
    catalog_path: str | None,
    batch_name: str | None,
    max_items: int | None,
    db_url: str | None,
) -> None:
    """Show items, images and estimated credits per model, and the budget.

    Estimates are lower bounds where the price is not known in advance (the
    server picks the model or resolution, or a resolution above the model's
    lowest); the plan marks them. With a ledger (--db), kinds it has seen
    charged are estimated at their latest charge, marked "seen on DATE". Sends
    nothing and needs no API key.
    """
    report = library.plan(
        list(job_files),
        catalog=catalog_path,
        batch_name=batch_name,
        max_items=max_items,
        db=db_url,
    )
    job_views.print_plan(report, as_json=as_json)


COMMANDS: list[click.Command] = [validate, plan]
