"""`validate` and `plan` on the terminal, and job-file problems for every command:
one `FILE:LINE: field: message` line per problem on stderr, then one summary."""

from __future__ import annotations

import json
from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from batcher.errors import JobFileError, Problem
from batcher.jobfile.results import PlanReport, Validation
from batcher.terminal import console as output
from batcher.terminal.plan_view import render_plans
from batcher.terminal.tables import print_table


def print_validation(report: Validation) -> None:
    """`ok: FILE (N prompts, batch NAME)` on stdout per good file; warnings and
    problems on stderr."""
    for job in report.jobs:
        prompts = "1 prompt" if job.items == 1 else f"{job.items} prompts"
        output.result(f"ok: {job.path} ({prompts}, batch {job.batch})")
    print_problems(
        [warning for job in report.jobs for warning in job.warnings],
        report.problems,
        files=report.files,
        bad_files=report.bad_files,
    )


def print_job_file_error(error: JobFileError) -> None:
    print_problems(error.warnings, error.problems, files=error.files, bad_files=error.bad_files)


def print_problems(
    warnings: Sequence[Problem],
    problems: Sequence[Problem],
    *,
    files: int | None,
    bad_files: int | None,
) -> None:
    """Warnings of the good files, then every problem of the bad ones, then one line."""
    for warning in warnings:
        output.warning(str(warning))
    if not problems:
        return
    for problem in problems:
        output.note(str(problem))
    found = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
    if files is None or bad_files is None:
        output.error(f"{found} in the job files; nothing was sent")
        return
    noun = "job file" if files == 1 else "job files"
    output.error(f"{found} in {bad_files} of {files} {noun}; nothing was sent")


def print_plan(report: PlanReport, *, as_json: bool) -> None:
    for warning in report.warnings:
        output.warning(str(warning))
    if as_json:
        output.result(json.dumps(report.document(), indent=2, ensure_ascii=False))
    elif output.stdout.is_terminal:
        output.stdout.print(render_plans(report.jobs))
    else:
        # Into a pipe or a file: plain columns and whole lines, nothing cut short.
        for part in render_plans(report.jobs).renderables:
            if isinstance(part, Table):
                print_table(part)
            else:
                output.result(part.plain if isinstance(part, Text) else str(part))
