"""Settings against the catalog: each value alone, then the merged settings of an item.

Settings precedence for an item: matrix combination > prompt entry (or CSV row)
> `file:` entry > `defaults` > the catalog's defaults. Within one place an
explicit `model` wins over the deprecated `quality_mode`, and `aspect_ratio`
over `orientation`. Each place is a `Layer`; a cross-field problem (a
resolution the model does not allow) is reported at the most specific layer
that set one of the two, naming where the other came from.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, cast

from batcher.jobfile.catalog import Catalog
from batcher.jobfile.items import ItemSettings
from batcher.jobfile.problems import Invalid, Problems, field_name, not_one_of
from batcher.jobfile.yaml_nodes import INT_RE, NodeReader, Pairs, Scalar, describe, scalar
from batcher.jobfile.yaml_nodes import line as node_line

__all__ = [
    "BAD",
    "DEPRECATED_FIELDS",
    "EMPTY",
    "SETTING_FIELDS",
    "Bad",
    "Layer",
    "Rules",
    "Value",
    "read_layer",
]

SETTING_FIELDS: Final = ("model", "resolution", "aspect_ratio", "tool", "image_count")
# Deprecated request fields and the setting each one stands for.
DEPRECATED_FIELDS: Final = {"quality_mode": "model", "orientation": "aspect_ratio"}
MAX_IMAGE_COUNT: Final = 16  # the API's range is 1..16 whatever the model


class Bad(enum.Enum):
    """Marks a setting whose value was wrong (already reported), so nothing built on it
    is checked again: one mistake, one message."""

    BAD = "bad"


BAD: Final = Bad.BAD
Value = str | int | None | Bad

LayerKind = Literal["defaults", "entry", "row", "matrix"]


@dataclass(frozen=True, slots=True)
class Layer:
    """What one place of a job sets: `defaults`, a `file:` or prompt entry, a CSV row,
    or one combination of an entry's `matrix`."""

    path: str
    line: int | None
    label: str  # field prefix in problems: "defaults", "prompts[3]", "" for a CSV row
    values: dict[str, Value]
    lines: dict[str, int]
    kind: LayerKind = "entry"

    def where(self, setting: str) -> str:
        place = self.label or "the CSV row"
        return f"set in {place} at {self.path}:{self.lines.get(setting, self.line)}"

    def report_line(self, involved: Sequence[str]) -> int | None:
        """Where a cross-field problem is reported: an entry's line (DESIGN.md), but in
        `defaults`, which is no entry, the line of the key at fault."""
        if self.kind != "defaults":
            return self.line
        return next((self.lines[s] for s in reversed(involved) if s in self.lines), self.line)


EMPTY: Final[dict[str, Value]] = {}


class Rules:
    """The catalog's rules for single settings, and the merged settings of items.

    Settings are interned: the 100,000 items of a big job share a handful of
    `ItemSettings` objects, and the cross-field check runs once per combination.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.models = tuple(catalog.models)
        self.resolutions = catalog.accepted_resolutions
        self.tools = tuple(sorted(catalog.tools))
        self.base: dict[str, Value] = {
            "model": catalog.default_model,
            "resolution": None,
            "aspect_ratio": catalog.default_aspect_ratio,
            "tool": catalog.default_tool,
            "image_count": 1,
            "name": None,
        }
        self._interned: dict[tuple[Value, ...], ItemSettings] = {}
        self._model_issues: dict[tuple[Value, ...], list[tuple[str, str]]] = {}

    def check(self, setting: str, value: Scalar, source: str) -> tuple[str | int, str | None]:
        """One setting's value checked alone: (the value to use, a warning or None).

        Deprecated fields come back translated (quality_mode -> a model name).
        Raises Invalid with a message that says what is allowed.
        """
        if setting == "image_count":
            if isinstance(value, str) and INT_RE.match(value.strip()):
                raise Invalid(f"must be a whole number, not the text {value!r} (remove the quotes)")
            if not isinstance(value, int) or isinstance(value, bool):
                raise Invalid(f"must be a whole number, not {describe(value, source)}")
            if not 1 <= value <= MAX_IMAGE_COUNT:
                raise Invalid(f"must be from 1 to {MAX_IMAGE_COUNT}, not {value}")
            return value, None
        if not isinstance(value, str):
            raise Invalid(f"must be text, not {describe(value, source, text_expected=True)}")
        if setting == "name":
            if not value.strip():
                raise Invalid("must not be empty")
            return value, None
        if setting == "model":
            return self._model(value)
        if setting == "resolution":
            if value not in self.resolutions:
                raise Invalid(not_one_of("resolution", value, self.resolutions))
            if value in self.catalog.deprecated_resolutions:
                return value, (
                    f"resolution {value!r} is deprecated: the server picks the resolution; "
                    "leave resolution out for the same effect"
                )
            return value, None
        if setting == "aspect_ratio":
            if value not in self.catalog.aspect_ratios:
                raise Invalid(not_one_of("aspect ratio", value, self.catalog.aspect_ratios))
            return value, None
        if setting == "tool":
            if value not in self.catalog.tools:
                raise Invalid(not_one_of("tool", value, self.tools, list_all=False))
            return value, None
        if setting == "quality_mode":
            return self._deprecated(setting, value, self.catalog.quality_modes, "model")
        if setting == "orientation":
            return self._deprecated(setting, value, self.catalog.orientations, "aspect_ratio")
        raise AssertionError(setting)  # pragma: no cover - callers pass known keys only

    def _model(self, value: str) -> tuple[str, str | None]:
        info = self.catalog.model(value)
        if info is None:
            raise Invalid(not_one_of("model", value, self.models, list_all=False))
        if info.deprecated:
            return value, f"model {value!r} is deprecated; the API still accepts it for now"
        return value, None

    def _deprecated(
        self, setting: str, value: str, mapping: Mapping[str, str], target: str
    ) -> tuple[str, str]:
        if value not in mapping:
            raise Invalid(not_one_of(setting.replace("_", " "), value, tuple(mapping)))
        meaning = mapping[value]
        warning = f"deprecated; {value!r} means {target}: {meaning}, so write that instead"
        return meaning, warning

    def settings(
        self, merged: Mapping[str, Value], chain: Sequence[Layer], problems: Problems
    ) -> ItemSettings | None:
        """The interned settings of an item, or None when they are wrong (reported once)."""
        key = (
            merged["model"],
            merged["resolution"],
            merged["aspect_ratio"],
            merged["tool"],
            merged["image_count"],
            merged.get("name"),
        )
        settings = self._interned.get(key)
        if settings is not None:
            return settings
        model, resolution, aspect_ratio, tool, image_count, name = key
        issue_key = (model, resolution, image_count)
        if BAD in issue_key:  # a wrong value, already reported where it was written
            return None
        issues = self._model_issues.get(issue_key)
        if issues is None:
            issues = self.catalog.model_problems(
                cast(str, model), cast(str | None, resolution), cast(int, image_count)
            )
            self._model_issues[issue_key] = issues
        if issues:
            _report_cross(issues, merged, chain, problems)
            return None
        if BAD in key:  # a wrong aspect ratio, tool or name: reported, nothing to build
            return None
        settings = ItemSettings(
            model=cast(str, model),
            resolution=cast(str | None, resolution),
            aspect_ratio=cast(str, aspect_ratio),
            tool=cast(str, tool),
            image_count=cast(int, image_count),
            name=cast(str | None, name),
        )
        self._interned[key] = settings
        return settings


def _report_cross(
    issues: list[tuple[str, str]],
    merged: Mapping[str, Value],
    chain: Sequence[Layer],
    problems: Problems,
) -> None:
    """Report a model/resolution/image_count clash at the most specific place that set
    one of the two, and say where the other one came from."""
    for setting, message in issues:
        involved = tuple(dict.fromkeys(("model", setting)))
        reporter = next(
            (layer for layer in chain if any(s in layer.values for s in involved)), chain[0]
        )
        notes = []
        if reporter.kind == "matrix":
            # Named by the values at fault only, so that one clash met in many
            # combinations (other keys varying) is one message.
            combination = ", ".join(
                f"{s}: {reporter.values[s]}" for s in involved if s in reporter.values
            )
            notes.append(f"matrix combination {combination}")
        for other in involved:
            if other in reporter.values:
                continue
            origin = next((layer for layer in chain if other in layer.values), None)
            where = origin.where(other) if origin is not None else "the catalog's default"
            notes.append(f"{other} {merged[other]!r} is {where}")
        if notes:
            message = f"{message} ({'; '.join(notes)})"
        field = reporter.label if reporter.kind == "matrix" else field_name(reporter.label, setting)
        problems.error(reporter.path, reporter.report_line(involved), field, message)


def _misplaced_hint(key: str, allowed: Sequence[str]) -> str:
    if key in ("vars", "zip", "matrix") and "template" not in allowed:
        return " (vars:, zip: and matrix: belong to a template: entry)"
    return ""


def read_layer(
    reader: NodeReader,
    rules: Rules,
    pairs: Pairs,
    label: str,
    line: int,
    allowed: Sequence[str],
    *,
    skip: Sequence[str] = ("prompt", "file"),
    kind: LayerKind = "entry",
) -> Layer:
    """The settings one mapping sets, each checked alone; deprecated fields translated.

    Keys in `skip` are the caller's to read; other keys not in `allowed` are reported.
    """
    values: dict[str, Value] = {}
    lines: dict[str, int] = {}
    deprecated: list[tuple[str, str, Value, int, str | None]] = []
    for key, (key_node, value_node) in pairs.items():
        if key in skip and key in allowed:
            continue
        if key not in allowed:
            reader.unknown_key(key, key_node, label, allowed, _misplaced_hint(key, allowed))
            continue
        value_line = node_line(value_node)
        value: Value
        warning: str | None = None
        try:
            raw = scalar(value_node, "a single value")
            value, warning = rules.check(key, raw, cast(str, value_node.value))
        except Invalid as exc:
            reader.error(value_line, field_name(label, key), str(exc))
            value = BAD
        target = DEPRECATED_FIELDS.get(key)
        if target is None:
            values[key] = value
            lines[key] = value_line
            if warning is not None:
                reader.warn(value_line, field_name(label, key), warning)
        else:
            deprecated.append((key, target, value, value_line, warning))
    for key, target, value, value_line, warning in deprecated:
        if target in values:
            reader.warn(
                value_line,
                field_name(label, key),
                f"deprecated, and ignored here because {target} is set",
            )
            continue
        values[target] = value
        lines[target] = value_line
        if warning is not None:
            reader.warn(value_line, field_name(label, key), warning)
    return Layer(reader.display, line, label, values, lines, kind)
