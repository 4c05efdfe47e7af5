"""Collecting what is wrong with a job: every error, warnings folded, and the
helpers that word a message (suggestions for near misses, the allowed values).

Nothing here knows YAML or the catalog; every other module of the job-file stage
reports through a `Problems`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import cast

from batcher.errors import JobFileError, Problem

__all__ = [
    "FailFast",
    "Invalid",
    "Problems",
    "field_name",
    "in_file_order",
    "not_one_of",
    "suggest",
]


class Invalid(Exception):
    """A value is wrong; the caller knows the file, line and field to report it at."""


class Problems:
    """Collects every error, and warnings folded to one per kind with a count."""

    def __init__(self) -> None:
        self.errors: list[Problem] = []
        self._seen: set[Problem] = set()
        self._warnings: dict[tuple[str, str, str], list[Problem | int]] = {}

    def error(self, path: str, line: int | None, field: str | None, message: str) -> None:
        problem = Problem(path, line, field, message)
        if problem not in self._seen:  # the same mistake reached twice (aliases, merges)
            self._seen.add(problem)
            self.errors.append(problem)

    def warn(self, path: str, line: int | None, field: str, message: str) -> None:
        # 50,000 entries with `quality_mode:` deserve one warning, not 50,000.
        kind = (path, field.rpartition(".")[2], message)
        entry = self._warnings.get(kind)
        if entry is None:
            self._warnings[kind] = [Problem(path, line, field, message), 0]
        else:
            entry[1] = cast(int, entry[1]) + 1

    def warnings(self) -> tuple[Problem, ...]:
        folded = []
        for first, more in self._warnings.values():
            assert isinstance(first, Problem) and isinstance(more, int)
            if more:
                suffix = f" (and {more} more like it in this file)"
                first = Problem(first.path, first.line, first.field, first.message + suffix)
            folded.append(first)
        return tuple(folded)


class FailFast(Problems):
    """For re-reads in `JobSpec.items()`: anything new to complain about means a file
    changed after validation."""

    def error(self, path: str, line: int | None, field: str | None, message: str) -> None:
        message = f"{message} (the file changed after it was validated)"
        raise JobFileError([Problem(path, line, field, message)])

    def warn(self, path: str, line: int | None, field: str, message: str) -> None:
        pass


def in_file_order(problems: Iterable[Problem], job_file: str) -> list[Problem]:
    """Problems by file (the job file first, then other files as met), then by line."""
    problems = list(problems)
    files = dict.fromkeys([job_file, *(p.path for p in problems)])
    rank = {path: index for index, path in enumerate(files)}
    return sorted(problems, key=lambda p: (rank[p.path], p.line or 0))


def field_name(label: str, key: str) -> str:
    """`prompts[3]` + `model` -> `prompts[3].model`; a top-level key stands alone."""
    return f"{label}.{key}" if label else key


def suggest(value: str, allowed: Iterable[str]) -> str | None:
    """The allowed value the user most likely meant, or None."""
    choices = list(allowed)
    for choice in choices:  # a case slip is the likeliest mistake
        if choice.lower() == value.lower():
            return choice
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def not_one_of(what: str, value: str, allowed: Sequence[str], *, list_all: bool = True) -> str:
    suggestion = suggest(value, allowed)
    message = f"unknown {what} {value!r}"
    if suggestion is not None:
        message += f"; did you mean {suggestion!r}?"
        if not list_all:
            return message
    return f"{message} (allowed: {', '.join(allowed)})"
