"""The validated job: `JobSpec`, whose `items()` streams every prompt as a `JobItem`.

Memory: a `JobSpec` keeps one small tuple per inline prompt (sharing the prompt
strings and interned settings), the values of template variables, and nothing
of prompts files, which are re-read line by line on every `items()` pass and
must not have changed since validation. Template combinations are built one at
a time. A job of 100,000 items therefore holds about one copy of its inline
prompt text and none of its prompts files or combinations.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from batcher.errors import Problem
from batcher.jobfile.items import NO_VARS, ItemSettings, JobItem, identity_digest, item_key
from batcher.jobfile.problems import FailFast, Problems
from batcher.jobfile.prompts_files import Entry

__all__ = ["DEFAULT_MAX_ITEMS", "InlineRun", "JobSpec", "Source", "TemplateSummary"]

DEFAULT_MAX_ITEMS = 100_000  # a job larger than this is refused unless max_items says more


class Source(Protocol):
    """Where a run of a job's prompts comes from: the job file, a prompts file, a template."""

    @property
    def display(self) -> str: ...

    def entries(self, problems: Problems) -> Iterator[Entry]: ...


@dataclass(frozen=True, slots=True)
class InlineRun:
    """A run of consecutive prompts written in the job file itself."""

    display: str
    prompts: list[tuple[str, ItemSettings, int]]  # (prompt, settings, line)

    def entries(self, problems: Problems) -> Iterator[Entry]:
        for prompt, settings, line in self.prompts:
            yield prompt, settings, line, NO_VARS


@dataclass(frozen=True, slots=True)
class TemplateSummary:
    """A templated entry as `plan` shows it."""

    line: int
    template: str  # as written
    combinations: int
    sample: tuple[str, ...]  # the first prompts it makes (three at most)
    axes: str = ""  # what `combinations` is the product of: "color 3 x model 2"
    vars: tuple[str, ...] = ()  # the names in each item's `vars`, in expansion order


@dataclass(frozen=True)
class JobSpec:
    """A validated job file. `items()` streams its prompts, as often as needed."""

    path: str  # the job file, as the user named it
    name: str  # the resolved batch name (placeholders filled, --batch-name applied)
    budget: int | None
    content_hash: str  # sha256 hex of the job file's bytes
    warnings: tuple[Problem, ...]
    item_count: int
    templates: tuple[TemplateSummary, ...]
    _sources: tuple[Source, ...] = field(repr=False, compare=False)

    def items(self) -> Iterator[JobItem]:
        """Every prompt as a `JobItem`, in file order; the same items on every call.

        Prompts files are read again on each call and must not have changed since
        `load_job` validated them (JobFileError otherwise). Only identity digests
        are kept to count occurrences, never prompt text.
        """
        seen: dict[bytes, int] = {}
        batch = self.name
        ordinal = 0
        for source in self._sources:
            path = source.display
            for prompt, settings, line, values in source.entries(FailFast()):
                # None only where a problem was reported, and FailFast raises on those.
                assert settings is not None
                identity = identity_digest(prompt, settings)
                occurrence = seen.get(identity, 0)
                seen[identity] = occurrence + 1
                key = item_key(batch, identity, occurrence)
                yield JobItem(ordinal, key, prompt, settings, path, line, values)
                ordinal += 1
