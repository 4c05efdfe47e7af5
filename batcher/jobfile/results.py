"""What `validate` and `plan` return for several job files at once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from batcher.errors import Problem
from batcher.jobfile.plan import ModelPlan, Plan, plan_document


@dataclass(frozen=True, slots=True)
class JobCheck:
    """A job file that loaded: where, which batch, how many prompts, what to watch."""

    path: str
    batch: str
    items: int
    warnings: tuple[Problem, ...]


@dataclass(frozen=True, slots=True)
class Validation:
    """Every good file and every problem of the bad ones (all of them, not the first)."""

    jobs: tuple[JobCheck, ...]
    problems: tuple[Problem, ...]
    files: int  # job files checked

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_files(self) -> int:
        return self.files - len(self.jobs)


@dataclass(frozen=True, slots=True)
class PlanReport:
    """The plans of several job files, with totals across them."""

    jobs: tuple[Plan, ...]
    warnings: tuple[Problem, ...] = ()  # of the job files: deprecated keys and the like

    def __iter__(self) -> Iterator[Plan]:
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)

    @property
    def items(self) -> int:
        return sum(plan.items for plan in self.jobs)

    @property
    def images(self) -> int:
        return sum(plan.images for plan in self.jobs)

    @property
    def estimated_credits(self) -> int:
        return sum(plan.estimated_credits for plan in self.jobs)

    @property
    def estimate_is_lower_bound(self) -> bool:
        return any(plan.estimate_is_lower_bound for plan in self.jobs)

    @property
    def models(self) -> tuple[ModelPlan, ...]:
        """Items, images and credits per model across every job, in first-seen order."""
        merged: dict[str, ModelPlan] = {}
        for plan in self.jobs:
            for row in plan.models:
                seen = merged.get(row.model)
                merged[row.model] = (
                    row
                    if seen is None
                    else ModelPlan(
                        row.model,
                        seen.items + row.items,
                        seen.images + row.images,
                        seen.estimated_credits + row.estimated_credits,
                        seen.exact and row.exact,
                    )
                )
        return tuple(merged.values())

    def document(self) -> dict[str, Any]:
        """The `plan --json` document."""
        return plan_document(self.jobs)
