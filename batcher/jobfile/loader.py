"""Job files in, validated `JobSpec`s out, every problem as FILE:LINE: field: message.

The stages, each in its own module: read the bytes (`file_reading`), compose
the YAML into nodes with lines (`yaml_nodes`), refuse alias bombs
(`alias_check`), walk the document (`builder`: settings in `settings_rules`,
prompts files in `prompts_files`, templates in `template_entries`), then fill
the batch name (`batch_name`). The node tree lives only inside `load_job`.
"""

from __future__ import annotations

import datetime
import gc
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from batcher.errors import JobFileError, Problem
from batcher.jobfile.alias_check import alias_problem
from batcher.jobfile.batch_name import resolve_name
from batcher.jobfile.builder import JobBuilder
from batcher.jobfile.catalog import Catalog
from batcher.jobfile.file_reading import NotRegularFileError, TooLargeError, read_capped
from batcher.jobfile.problems import in_file_order
from batcher.jobfile.prompts_files import CSV_COLUMNS
from batcher.jobfile.spec import DEFAULT_MAX_ITEMS, JobSpec
from batcher.jobfile.yaml_nodes import compose, text_problem

__all__ = ["CSV_COLUMNS", "DEFAULT_MAX_ITEMS", "JobSpec", "collect_jobs", "load_job"]


def load_job(
    path: str | Path,
    catalog: Catalog,
    *,
    batch_name: str | None = None,
    today: datetime.date | None = None,
    max_items: int | None = None,
) -> JobSpec:
    """Read and validate a job file and the prompts and vars files it names.

    Raises JobFileError with every problem found (not only the first).
    `batch_name` replaces the file's `name` (placeholders apply to it too);
    `today` fills `{date}` (default: today's local date); `max_items` replaces
    the file's `max_items` (default 100,000).
    """
    job_path = Path(path)
    display = str(path)
    raw = _read_job_bytes(job_path, display)
    content_hash = hashlib.sha256(raw).hexdigest()
    problem = text_problem(raw, display)
    if problem is not None:
        raise JobFileError([problem])
    # Composing and walking allocate hundreds of thousands of small objects that
    # all stay alive until the walk ends; the cyclic collector would rescan them
    # again and again for nothing (it tripled the load time of large jobs).
    with _gc_paused():
        root = compose(raw, display)
        if b"*" in raw:  # no `*`, no alias: skip the expansion check
            bomb = alias_problem(root, display)
            if bomb is not None:
                raise JobFileError([bomb])
        del raw  # the tree holds what is needed now
        builder = JobBuilder(job_path, display, catalog, max_items)
        builder.walk(root)
        del root
    template = builder.name_template
    problems = builder.problems
    name = ""
    if batch_name is not None:
        name = resolve_name(batch_name, job_path, today, problems, display, None, "--batch-name")
    elif template is not None:
        text, line = template
        name = resolve_name(text, job_path, today, problems, display, line, "name")
    if problems.errors:
        raise JobFileError(in_file_order(problems.errors, display))
    return JobSpec(
        path=display,
        name=name,
        budget=builder.budget,
        content_hash=content_hash,
        warnings=tuple(in_file_order(problems.warnings(), display)),
        item_count=builder.count,
        templates=tuple(builder.templates),
        _sources=tuple(builder.sources),
    )


def collect_jobs(
    paths: Sequence[str | Path],
    catalog: Catalog,
    *,
    batch_name: str | None = None,
    max_items: int | None = None,
) -> tuple[list[JobSpec], list[Problem]]:
    """Every job file that loads, and every problem of those that do not."""
    jobs: list[JobSpec] = []
    problems: list[Problem] = []
    for path in paths:
        try:
            jobs.append(load_job(path, catalog, batch_name=batch_name, max_items=max_items))
        except JobFileError as exc:
            problems.extend(exc.problems)
    return jobs, problems


@contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_job_bytes(path: Path, display: str) -> bytes:
    try:
        return read_capped(path)
    except FileNotFoundError:
        message = "no such job file"
    except IsADirectoryError:
        message = "is a folder, not a job file"
    except NotRegularFileError as exc:
        message = f"is {exc.kind}, not a regular file: a job file must be a regular file"
    except TooLargeError as exc:
        message = f"{exc} a job file may hold; put long lists of prompts in a prompts file"
    except OSError as exc:
        message = f"cannot read the job file: {exc.strerror or exc}"
    raise JobFileError([Problem(display, None, None, message)])
