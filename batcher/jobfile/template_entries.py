"""Reading a `template:` entry: its template and name, local `vars`, `zip` groups
and `matrix`, checked against each other and the catalog, into an `Expansion`.

Checking costs the size of the lists, not of their product: a prompt is made
of checked values only, and the settings of every matrix combination are
checked once here (interned, so a clash met in many combinations is one
message at the entry's line, named with the combination).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final, cast

from batcher.jobfile.batch_name import PLACEHOLDERS
from batcher.jobfile.expansion import Axis, Expansion, MatrixCombination, describe_axes
from batcher.jobfile.items import NO_VARS
from batcher.jobfile.problems import Invalid, field_name, suggest
from batcher.jobfile.settings_rules import (
    DEPRECATED_FIELDS,
    SETTING_FIELDS,
    Layer,
    Rules,
    Value,
    read_layer,
)
from batcher.jobfile.template_text import TemplateText, compile_template
from batcher.jobfile.variables import VarList, VarTable, read_vars
from batcher.jobfile.yaml_nodes import (
    MappingNode,
    Node,
    NodeReader,
    Pairs,
    SequenceNode,
    is_null,
    line,
    scalar,
    text,
)

__all__ = ["TEMPLATE_KEYS", "TemplateEntry", "TemplateReader"]

_OWN_KEYS: Final = ("template", "name", "vars", "zip", "matrix")
TEMPLATE_KEYS: Final = (*_OWN_KEYS, *SETTING_FIELDS, *DEPRECATED_FIELDS)


@dataclass(frozen=True, slots=True)
class TemplateEntry:
    """What reading a template entry gave: its count (known even when it is wrong, for
    the max_items message) and, when it is right, its expansion."""

    combinations: int
    axes: str  # what the count is the product of, e.g. "product 40 x color 3"
    expansion: Expansion | None


_FAILED: Final = TemplateEntry(0, "", None)


@dataclass(frozen=True, slots=True)
class _Used:
    """A variable the template or name uses, and the node to blame if it is undefined."""

    name: str
    node: Node
    field: str


class TemplateReader:
    """Reads template entries against the job's top-level vars and defaults."""

    def __init__(
        self,
        reader: NodeReader,
        rules: Rules,
        job_folder: Path,
        top_vars: VarTable | None,
    ) -> None:
        self.reader = reader
        self.rules = rules
        self.job_folder = job_folder
        self.top_vars: VarTable = top_vars or {}
        self._top_broken = top_vars is None  # `vars:` was no mapping: names are unknown

    def read(
        self,
        node: MappingNode,
        pairs: Pairs,
        label: str,
        defaults: Layer,
        merged: Mapping[str, Value],
        limit: int,
    ) -> TemplateEntry:
        """`merged` holds the defaults over the catalog's; `limit` is max_items, above
        which the matrix is not walked (the job is refused for its size anyway)."""
        reader, entry_line = self.reader, line(node)
        template = self._template(pairs["template"][1], f"{label}.template")
        name = self._name(pairs.get("name"), f"{label}.name")
        name_ok = "name" not in pairs or name is not None
        layer = read_layer(
            reader, self.rules, pairs, label, entry_line, TEMPLATE_KEYS, skip=_OWN_KEYS
        )
        if name is not None and not name.names:  # a name without variables: a plain setting
            layer.values["name"] = name.render({})
            layer.lines["name"] = line(pairs["name"][1])
            name = None
        local: VarTable | None = {}
        if "vars" in pairs:
            local = read_vars(reader, pairs["vars"][1], f"{label}.vars", self.job_folder)
        used = self._used(template, name, pairs, label) if template is not None else []
        matrix, matrix_ok = self._matrix(pairs.get("matrix"), f"{label}.matrix", used)
        # The settings of every matrix combination are checked whatever else is wrong
        # (over the good values), unless there are too many to walk: then the job is
        # refused for its size.
        combinations: tuple[MatrixCombination, ...] | None = None
        if math.prod(len(values) for values in matrix.values()) <= limit:
            entry_merged = {**merged, **layer.values}
            combinations = self._combinations(
                matrix, entry_line, label, entry_merged, layer, defaults
            )
        if template is None or not name_ok or local is None:
            return _FAILED  # what the variables are is unknown: nothing more to check
        lists, defined = self._resolve(used, local)
        self._unused(local, used)
        groups = self._zip(pairs.get("zip"), f"{label}.zip", used, lists)
        if not defined or groups is None or not matrix_ok:
            return _FAILED
        axes = _axes(used, lists, groups)
        sizes = [(key, len(values)) for key, values in matrix.items()]
        count = math.prod(len(axis.values) for axis in axes) * math.prod(n for _, n in sizes)
        description = describe_axes(axes, sizes)
        if count > limit or combinations is None:
            return TemplateEntry(count, description, None)
        expansion = Expansion(reader.display, entry_line, template, name, axes, combinations)
        return TemplateEntry(count, description, expansion)

    # -- template and name

    def _template(self, node: Node, field: str) -> TemplateText | None:
        return self._compiled(node, field, "text (the template)", "empty template")

    def _name(self, pair: tuple[Node, Node] | None, field: str) -> TemplateText | None:
        if pair is None:
            return None
        return self._compiled(pair[1], field, "text (the project name)", "must not be empty")

    def _compiled(self, node: Node, field: str, expected: str, empty: str) -> TemplateText | None:
        if is_null(node):
            self.reader.error(line(node), field, empty)
            return None
        try:
            source = text(node, expected)
            if not source.strip():
                raise Invalid(empty)
            return compile_template(source)
        except Invalid as exc:
            self.reader.error(line(node), field, str(exc))
            return None

    # -- variables

    def _used(
        self, template: TemplateText, name: TemplateText | None, pairs: Pairs, label: str
    ) -> list[_Used]:
        used = {n: _Used(n, pairs["template"][1], f"{label}.template") for n in template.names}
        if name is not None:
            for n in name.names:
                used.setdefault(n, _Used(n, pairs["name"][1], f"{label}.name"))
        return list(used.values())

    def _resolve(self, used: Sequence[_Used], local: VarTable) -> tuple[dict[str, VarList], bool]:
        """The list of each used variable, local over top-level; False if any is missing."""
        lists: dict[str, VarList] = {}
        ok = True
        for var in used:
            if var.name in local or var.name in self.top_vars:
                found = local[var.name] if var.name in local else self.top_vars[var.name]
                if found is None:  # defined, but its list is wrong (reported)
                    ok = False
                else:
                    lists[var.name] = found
                continue
            ok = False
            if not self._top_broken:
                self.reader.error(line(var.node), var.field, self._undefined(var.name, local))
        return lists, ok

    def _undefined(self, name: str, local: VarTable) -> str:
        defined = list(dict.fromkeys([*local, *self.top_vars]))
        message = f"variable {{{name}}} is not defined"
        suggestion = suggest(name, defined)
        if suggestion is not None:
            message += f"; did you mean {{{suggestion}}}?"
        if name in PLACEHOLDERS:
            message += f" ({{{name}}} is filled in the batch name only)"
        elif defined:
            message += f" (defined: {', '.join(defined)})"
        else:
            message += " (define it under vars:, at the top level or in the entry)"
        return message

    def _unused(self, local: VarTable, used: Sequence[_Used]) -> None:
        names = {var.name for var in used}
        for var in local.values():
            if var is not None and var.name not in names:
                self.reader.warn(var.line, var.field, "not used by the template or the name")

    # -- zip

    def _zip(
        self,
        pair: tuple[Node, Node] | None,
        field: str,
        used: Sequence[_Used],
        lists: Mapping[str, VarList],
    ) -> list[tuple[str, ...]] | None:
        """The zip groups (each two or more used variables of one length), or None."""
        if pair is None:
            return []
        node = pair[1]
        if not isinstance(node, SequenceNode) or not node.value:
            self.reader.error(
                line(node),
                field,
                "must be a list of variable names ([a, b]), or a list of such lists",
            )
            return None
        nested = [isinstance(item, SequenceNode) for item in node.value]
        if any(nested) and not all(nested):
            self.reader.error(
                line(node), field, "mixes names and lists: write [a, b] or [[a, b], [c, d]]"
            )
            return None
        group_nodes: list[SequenceNode] = node.value if all(nested) else [node]
        names_used = {var.name for var in used}
        seen: set[str] = set()
        groups: list[tuple[str, ...]] = []
        ok = True
        for index, group_node in enumerate(group_nodes):
            where = f"{field}[{index}]" if group_node is not node else field
            group = self._zip_group(group_node, where, names_used, seen)
            if group is None:
                ok = False
                continue
            sizes = {name: len(lists[name].values) for name in group if name in lists}
            if len(set(sizes.values())) > 1:
                listed = ", ".join(f"{name} has {size}" for name, size in sizes.items())
                self.reader.error(
                    line(group_node),
                    where,
                    f"lists of unequal length ({listed} values); zipped variables move "
                    "together, index by index, so their lists need the same length",
                )
                ok = False
                continue
            groups.append(group)
        return groups if ok else None

    def _zip_group(
        self, node: SequenceNode, field: str, used: set[str], seen: set[str]
    ) -> tuple[str, ...] | None:
        names: list[str] = []
        ok = True
        for item in node.value:
            try:
                name = text(item, "a variable name")
            except Invalid as exc:
                self.reader.error(line(item), field, str(exc))
                ok = False
                continue
            if name not in used:
                self.reader.error(
                    line(item), field, f"{{{name}}} is not used by the template or the name"
                )
                ok = False
            elif name in seen:
                self.reader.error(line(item), field, f"{{{name}}} is zipped twice")
                ok = False
            seen.add(name)
            names.append(name)
        if ok and len(names) < 2:
            self.reader.error(line(node), field, "a zip group needs two or more variables")
            ok = False
        return tuple(names) if ok else None

    # -- matrix

    def _matrix(
        self, pair: tuple[Node, Node] | None, field: str, used: Sequence[_Used]
    ) -> tuple[dict[str, tuple[Value, ...]], bool]:
        """Each matrix setting's good values, in file order, and whether all were good."""
        if pair is None:
            return {}, True
        node = pair[1]
        if not isinstance(node, MappingNode) or not node.value:
            self.reader.error(line(node), field, "must be a mapping of settings to lists of values")
            return {}, False
        reader = self.reader
        names_used = {var.name for var in used}
        matrix: dict[str, tuple[Value, ...]] = {}
        ok = True
        for key, (key_node, value_node) in reader.pairs(node, field).items():
            where = field_name(field, key)
            if key not in SETTING_FIELDS:
                hint = ""
                if key in DEPRECATED_FIELDS:
                    hint = f" (deprecated; vary {DEPRECATED_FIELDS[key]} instead)"
                elif key == "name":
                    hint = " (the name varies with the variables it uses)"
                reader.unknown_key(key, key_node, field, SETTING_FIELDS, hint)
                ok = False
                continue
            if key in names_used:
                reader.error(
                    line(key_node),
                    where,
                    f"the template uses a variable {{{key}}} too; rename the variable, "
                    "since an item's vars hold both",
                )
                ok = False
                continue
            values, good = self._matrix_values(value_node, where, key)
            ok = ok and good
            if values:
                matrix[key] = values
        return matrix, ok

    def _matrix_values(self, node: Node, field: str, key: str) -> tuple[tuple[Value, ...], bool]:
        """The good values of one matrix setting, and whether all were good."""
        if not isinstance(node, SequenceNode):
            self.reader.error(
                line(node),
                field,
                "must be a list of values ([a, b]); a setting for every combination "
                "goes on the entry itself",
            )
            return (), False
        if not node.value:
            self.reader.error(line(node), field, "the list is empty; give at least one value")
            return (), False
        values: list[Value] = []
        ok = True
        for index, item in enumerate(node.value):
            where = f"{field}[{index}]"
            try:
                raw = scalar(item, "a single value")
                value, warning = self.rules.check(key, raw, str(item.value))
            except Invalid as exc:
                self.reader.error(line(item), where, str(exc))
                ok = False
                continue
            if warning is not None:
                self.reader.warn(line(item), where, warning)
            values.append(value)
        return tuple(values), ok

    def _combinations(
        self,
        matrix: Mapping[str, tuple[Value, ...]],
        entry_line: int,
        label: str,
        merged: Mapping[str, Value],
        layer: Layer,
        defaults: Layer,
    ) -> tuple[MatrixCombination, ...] | None:
        """The checked settings of every matrix combination (one without a matrix)."""
        problems = self.reader.problems
        if not matrix:
            settings = self.rules.settings(merged, (layer, defaults), problems)
            return None if settings is None else ((NO_VARS, settings),)
        keys = tuple(matrix)
        lines = dict.fromkeys(keys, entry_line)
        found: list[MatrixCombination] = []
        ok = True
        for combination in itertools.product(*matrix.values()):
            values = dict(zip(keys, combination, strict=True))
            chain = (
                Layer(self.reader.display, entry_line, f"{label}.matrix", values, lines, "matrix"),
                layer,
                defaults,
            )
            settings = self.rules.settings({**merged, **values}, chain, problems)
            if settings is None:
                ok = False
                continue
            if ok:
                # Checked values only: text, or a number for image_count.
                found.append((MappingProxyType(cast(dict[str, str | int], values)), settings))
        return tuple(found) if ok else None


def _axes(
    used: Sequence[_Used], lists: Mapping[str, VarList], groups: Sequence[tuple[str, ...]]
) -> tuple[Axis, ...]:
    """One axis per used variable, a zip group at its first member's place."""
    group_of = {name: group for group in groups for name in group}
    axes: list[Axis] = []
    placed: set[tuple[str, ...]] = set()
    for var in used:
        group = group_of.get(var.name, (var.name,))
        if group in placed:
            continue
        placed.add(group)
        columns = [lists[name].values for name in group]
        axes.append(Axis(group, tuple(zip(*columns, strict=True))))
    return tuple(axes)
