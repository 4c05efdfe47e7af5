"""`batcher validate` and `batcher plan`: offline, no key, nothing sent, nothing written."""

from __future__ import annotations

import json
from collections.abc import Sequence

import click

from batcher.errors import EXIT_INPUT, Problem
from batcher.jobfile import JobSpec, build_plan, collect_jobs, plan_document
from batcher.jobfile.catalog import CATALOG_ENV, load_catalog
from batcher.terminal import console as output
from batcher.terminal.plan_view import render_plans

catalog_option = click.option(
    "--catalog",
    "catalog_path",
    metavar="FILE",
    envvar=CATALOG_ENV,
    show_envvar=True,
    help="Model catalog file to use instead of the packaged one.",
)
max_items_option = click.option(
    "--max-items",
    type=click.IntRange(min=1),
    metavar="N",
    help="Refuse a job that makes more than N items (default: the job file's max_items, "
    "else 100,000).",
)
job_files_argument = click.argument(
    "job_files", metavar="JOB.yaml...", nargs=-1, required=True, type=click.Path()
)


def _report(jobs: Sequence[JobSpec], problems: Sequence[Problem], total: int) -> None:
    """Warnings of good files, then every problem of bad ones, on stderr; exit 2 if any."""
    for job in jobs:
        for warning in job.warnings:
            output.warning(str(warning))
    if not problems:
        return
    for problem in problems:
        output.note(str(problem))
    bad = total - len(jobs)
    files = "job file" if total == 1 else "job files"
    found = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
    output.error(f"{found} in {bad} of {total} {files}; nothing was sent")
    click.get_current_context().exit(EXIT_INPUT)


@click.command()
@job_files_argument
@catalog_option
@max_items_option
def validate(job_files: tuple[str, ...], catalog_path: str | None, max_items: int | None) -> None:
    """Check job files and the prompts files they name; print every problem found.

    Prints `ok: FILE (N prompts, batch NAME)` for each good file. Exits 2 if any
    file has a problem. Sends nothing and needs no API key.
    """
    catalog = load_catalog(catalog_path)
    jobs, problems = collect_jobs(job_files, catalog, max_items=max_items)
    for job in jobs:
        prompts = "1 prompt" if job.item_count == 1 else f"{job.item_count} prompts"
        output.result(f"ok: {job.path} ({prompts}, batch {job.name})")
    _report(jobs, problems, len(job_files))


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
def plan(
    job_files: tuple[str, ...],
    as_json: bool,
    catalog_path: str | None,
    batch_name: str | None,
    max_items: int | None,
) -> None:
    """Show items, images and estimated credits per model, and the budget.

    Estimates are lower bounds where the price is not known in advance (the
    server picks the model or resolution, or a resolution above the model's
    lowest); the plan marks them. Sends nothing and needs no API key.
    """
    catalog = load_catalog(catalog_path)
    jobs, problems = collect_jobs(job_files, catalog, batch_name=batch_name, max_items=max_items)
    _report(jobs, problems, len(job_files))
    plans = [build_plan(job, catalog) for job in jobs]
    if as_json:
        output.result(json.dumps(plan_document(plans), indent=2, ensure_ascii=False))
    else:
        output.stdout.print(render_plans(plans))


COMMANDS: list[click.Command] = [validate, plan]
