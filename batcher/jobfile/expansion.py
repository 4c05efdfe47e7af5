"""A template entry's combinations, streamed: one item each, never all at once.

The axes are the variables the template and the name use, in order of first
use (a `zip` group is one axis), then the `matrix` settings in file order; the
last axis varies fastest. Only the axes' values are held; each combination is
built when it is asked for, so 100,000 combinations cost what one does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from batcher.jobfile.items import ItemSettings, ItemVars
from batcher.jobfile.problems import Problems
from batcher.jobfile.prompts_files import Entry
from batcher.jobfile.template_text import TemplateText

__all__ = ["SAMPLE_SIZE", "Axis", "Expansion", "MatrixCombination"]

SAMPLE_SIZE: Final = 3  # prompts shown by `plan` per templated entry


@dataclass(frozen=True, slots=True)
class Axis:
    """One axis of a product: a variable, or a zip group moving index by index."""

    names: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]  # one tuple per position, a value per name

    def describe(self) -> str:
        return f"{' + '.join(self.names)} {len(self.values):,}"


# The matrix settings of one combination, and the checked settings they make.
MatrixCombination = tuple[ItemVars, ItemSettings]


@dataclass(frozen=True, slots=True)
class Expansion:
    """The items of one template entry, in expansion order, on every call."""

    display: str  # the job file
    line: int  # the entry's line: every combination's item points there
    template: TemplateText
    name: TemplateText | None  # a templated project name, else None
    axes: tuple[Axis, ...]
    matrix: tuple[MatrixCombination, ...]  # one (no vars, the entry's settings) without one

    @property
    def combinations(self) -> int:
        return math.prod(len(axis.values) for axis in self.axes) * len(self.matrix)

    def prompts(self) -> Iterator[tuple[str, dict[str, str]]]:
        """Each combination of the variables: (the prompt, the values), matrix aside."""
        names = tuple(name for axis in self.axes for name in axis.names)
        render = self.template.render
        chain = itertools.chain.from_iterable
        for combination in itertools.product(*(axis.values for axis in self.axes)):
            values = dict(zip(names, chain(combination), strict=True))
            yield render(values).strip(), values

    @property
    def var_names(self) -> tuple[str, ...]:
        """What every item's `vars` holds: the variables in axis order, then the
        matrix settings in file order."""
        matrix_names = tuple(self.matrix[0][0]) if self.matrix else ()
        return tuple(name for axis in self.axes for name in axis.names) + matrix_names

    def sample(self) -> tuple[str, ...]:
        return tuple(prompt for prompt, _ in itertools.islice(self.prompts(), SAMPLE_SIZE))

    def entries(self, problems: Problems) -> Iterator[Entry]:
        """Every combination as (prompt, settings, line, vars); everything was checked
        when the entry was read, so `problems` never hears from here."""
        line, name, matrix = self.line, self.name, self.matrix
        for prompt, values in self.prompts():
            project = name.render(values) if name is not None else None
            for matrix_vars, settings in matrix:
                if project is not None:
                    settings = _named(settings, project)
                item_vars = {**values, **matrix_vars} if matrix_vars else values
                yield prompt, settings, line, MappingProxyType(item_vars)


def _named(settings: ItemSettings, name: str) -> ItemSettings:
    return ItemSettings(
        settings.model,
        settings.resolution,
        settings.aspect_ratio,
        settings.tool,
        settings.image_count,
        name,
    )


def describe_axes(axes: Sequence[Axis], matrix_axes: Sequence[tuple[str, int]]) -> str:
    """`product 1,000 x color 12 x model 2`: what a count is the product of."""
    parts = [axis.describe() for axis in axes] + [f"{key} {size:,}" for key, size in matrix_axes]
    return " x ".join(parts)
