"""`vars:` — named lists of values for templates, at the top level or in an entry.

A list is written inline (`color: [red, teal]`) or read from a file
(`product: {file: prompts/products.txt}`: one value per line, blank and `#`
lines skipped, relative to the job file). Every value is text. The lists are
held in memory: each is one axis of a product, and a product needs to come
back to its values (files are capped in size for that reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batcher.jobfile.file_reading import (
    MAX_HELD_FILE_BYTES,
    TooLargeError,
    open_regular,
    text_lines,
)
from batcher.jobfile.problems import Invalid, field_name
from batcher.jobfile.prompts_files import unreadable
from batcher.jobfile.template_text import NAME_RULE, VAR_NAME_RE
from batcher.jobfile.yaml_nodes import (
    MappingNode,
    Node,
    NodeReader,
    SequenceNode,
    is_null,
    line,
    text,
)

__all__ = ["VarList", "VarTable", "read_vars"]


@dataclass(frozen=True, slots=True)
class VarList:
    """One variable: its values, and where it is defined (for problems)."""

    name: str
    values: tuple[str, ...]
    line: int
    field: str  # "vars.color" or "prompts[2].vars.hero"


# A `vars:` mapping read: each name to its list, or to None where the list was
# wrong (reported), so that templates using it are not told it is undefined.
VarTable = dict[str, VarList | None]


def read_vars(reader: NodeReader, node: Node, label: str, job_folder: Path) -> VarTable | None:
    """The variables of a `vars:` mapping; None (reported) when it is no mapping at all."""
    if is_null(node):
        return {}
    if not isinstance(node, MappingNode):
        reader.error(line(node), label, "must be a mapping of names to lists of values")
        return None
    found: VarTable = {}
    for name, (key_node, value_node) in reader.pairs(node, label).items():
        field = field_name(label, name)
        if not VAR_NAME_RE.match(name):
            reader.error(line(key_node), field, f"{name!r} is not a variable name ({NAME_RULE})")
            continue
        values = _values(reader, value_node, field, job_folder)
        found[name] = None if values is None else VarList(name, values, line(value_node), field)
    return found


def _values(reader: NodeReader, node: Node, field: str, job_folder: Path) -> tuple[str, ...] | None:
    if isinstance(node, MappingNode):
        return _file_values(reader, node, field, job_folder)
    if not isinstance(node, SequenceNode):
        reader.error(
            line(node), field, "must be a list of values ([a, b, ...]) or a file ({file: path})"
        )
        return None
    if not node.value:
        reader.error(line(node), field, "the list is empty; give at least one value")
        return None
    values: list[str] = []
    ok = True
    for index, item in enumerate(node.value):
        where = f"{field}[{index}]"
        if is_null(item):
            reader.error(line(item), where, "empty value")
            ok = False
            continue
        try:
            value = text(item)
        except Invalid as exc:
            reader.error(line(item), where, str(exc))
            ok = False
            continue
        if not value.strip():
            reader.error(line(item), where, "empty value")
            ok = False
            continue
        values.append(value)
    return tuple(values) if ok else None


def _file_values(
    reader: NodeReader, node: MappingNode, field: str, job_folder: Path
) -> tuple[str, ...] | None:
    pairs = reader.pairs(node, field)
    if set(pairs) - {"file"}:
        for key, (key_node, _) in pairs.items():
            if key != "file":
                reader.unknown_key(
                    key, key_node, field, ("file",), " (a vars file is {file: path})"
                )
        return None
    if "file" not in pairs:
        reader.error(line(node), field, "must be a list of values or {file: path}")
        return None
    file_node = pairs["file"][1]
    file_field = f"{field}.file"
    try:
        name = text(file_node, "a file path").strip()
    except Invalid as exc:
        reader.error(line(file_node), file_field, str(exc))
        return None
    if not name:
        reader.error(line(file_node), file_field, "empty file path")
        return None
    path = job_folder / name
    display = str(Path(reader.display).parent / name)
    problem = unreadable(path, display, "vars file")
    if problem is not None:
        reader.error(line(file_node), file_field, problem)
        return None
    origin = f"{file_field} in {reader.display}:{line(file_node)}"
    return _read_file(reader, path, display, origin, line(file_node), file_field)


def _read_file(
    reader: NodeReader, path: Path, display: str, origin: str, entry_line: int, field: str
) -> tuple[str, ...] | None:
    problems = reader.problems
    before = len(problems.errors)
    values: list[str] = []
    try:
        with open_regular(path) as stream:
            size = stream.seek(0, 2)
            stream.seek(0)
            if size > MAX_HELD_FILE_BYTES:
                raise TooLargeError(size)
            for _, raw in text_lines(stream, display, origin, problems, what="a list of values"):
                value = raw.strip()
                if value and value[0] != "#":
                    values.append(value)
    except TooLargeError as exc:
        reader.error(entry_line, field, f"{display} {exc} a vars file may hold")
        return None
    except OSError as exc:
        reader.error(entry_line, field, f"cannot read {display}: {exc.strerror or exc}")
        return None
    if len(problems.errors) > before:
        return None
    if not values:
        reader.error(entry_line, field, f"{display} holds no values; give at least one")
        return None
    return tuple(values)
