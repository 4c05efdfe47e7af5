"""YAML as nodes with lines: composing a job file, typing its scalars, reading mappings.

We compose the YAML into nodes with libyaml and walk the nodes ourselves instead
of calling `yaml.safe_load`, because the constructed Python objects lose what a
user needs to fix a file, and add surprises of their own:

- every node keeps its line, so each problem names where it is;
- YAML 1.1 types plain scalars by pattern (`16:9` is the sexagesimal 969, `no`
  is False, `007` is octal); we type them from their source text with a few
  plain rules (see `plain_value`), so `aspect_ratio: 16:9` means what it says;
- a duplicate key is an error at the duplicate, not a silent overwrite;
- merge keys (`<<: *anchor`) fill in what a mapping does not set itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from batcher.errors import JobFileError, Problem
from batcher.jobfile.problems import Invalid, Problems, field_name, suggest

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml: slower, same results
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

__all__ = [
    "INT_RE",
    "MappingNode",
    "Node",
    "NodeReader",
    "Pairs",
    "Scalar",
    "ScalarNode",
    "SequenceNode",
    "compose",
    "describe",
    "is_null",
    "kind",
    "line",
    "scalar",
    "text",
    "text_problem",
    "whole",
]

MAX_MERGE_DEPTH: Final = 20

STR_TAG: Final = "tag:yaml.org,2002:str"
_SEQ_TAG: Final = "tag:yaml.org,2002:seq"
_MAP_TAG: Final = "tag:yaml.org,2002:map"
PLAIN_TAG: Final = "tag:batcher,2026:plain"  # an untagged plain scalar, typed by plain_value

INT_RE: Final = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_RE: Final = re.compile(r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_NUMBER_START: Final = frozenset("+-.0123456789")
_NULLS: Final = frozenset({"~", "null", "Null", "NULL"})
_BOOLS: Final = {
    spelled: value
    for word, value in (
        ("true", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("no", False),
        ("off", False),
    )
    for spelled in (word, word.title(), word.upper())
}
_SPECIAL_FLOATS: Final = frozenset(
    v for word in (".inf", "+.inf", "-.inf", ".nan") for v in (word, word.upper(), word.title())
)

Scalar = str | int | float | bool | None
Pairs = dict[str, tuple[Node, Node]]  # key as written -> (key node, value node)


# ---------------------------------------------------------------------------
# Composing


class _JobLoader(_BaseLoader):
    """libyaml's composer with a resolver that leaves plain scalars untyped.

    The stock resolver's regexes are where YAML 1.1 turns `16:9` into 969; we
    type plain scalars ourselves (`plain_value`). Explicit tags stay as written.
    """

    def resolve(self, kind: type[Node], value: object, implicit: object) -> str:
        if kind is ScalarNode:
            plain = cast(tuple[bool, bool], implicit)[0]
            return PLAIN_TAG if plain else STR_TAG
        return _SEQ_TAG if kind is SequenceNode else _MAP_TAG


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def text_problem(data: bytes, display: str) -> Problem | None:
    """Binary junk and non-UTF-8 text, told apart from YAML syntax errors."""
    nul = data.find(b"\0")
    if nul >= 0:
        return Problem(
            display, _line_of(data, nul), None, "contains NUL bytes: a binary file, not YAML text"
        )
    try:
        data.decode("utf-8")  # a transient copy, for a clearer message than libyaml's
    except UnicodeDecodeError as exc:
        return Problem(
            display,
            _line_of(data, exc.start),
            None,
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8",
        )
    return None


_QUOTE_HINT: Final = "; a value that contains ': ' must be put in quotes"
_YAML_HINTS: Final = {  # libyaml's wording, then PyYAML's
    "mapping values are not allowed in this context": _QUOTE_HINT,
    "mapping values are not allowed here": _QUOTE_HINT,
    "found undefined alias": "; an alias *name needs an anchor &name defined before it",
}


def _char_at(data: bytes, line: int, column: int) -> str:
    """The character at a 0-based line and column (only called on errors: a scan is fine)."""
    text = data.split(b"\n", line + 1)[line].decode("utf-8", errors="replace")
    return text[column : column + 1]


def compose(data: bytes, display: str) -> Node:
    """The document's root node; JobFileError with the line for anything that is not YAML."""
    try:
        root = yaml.compose(data, Loader=_JobLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        if exc.problem == "but found another document":
            message = "a job file holds one YAML document, but a second one starts here (`---`)"
        else:
            problem = exc.problem or "not valid YAML"
            hint = _YAML_HINTS.get(problem, "")
            if mark is not None and _char_at(data, mark.line, mark.column) == "\t":
                problem, hint = "found a tab", "; indent with spaces, not tabs"
            message = f"YAML syntax error: {problem}{hint}"
            context = exc.context_mark
            if (
                exc.context
                and context is not None
                and mark is not None
                and context.line != mark.line
            ):
                message += f" ({exc.context} at line {context.line + 1})"
        raise JobFileError([Problem(display, line, None, message)]) from None
    except yaml.reader.ReaderError as exc:
        position = exc.position if isinstance(exc.position, int) else 0
        character = exc.character if isinstance(exc.character, int) else 0
        message = f"character U+{character:04X} is not allowed in YAML ({exc.reason})"
        raise JobFileError([Problem(display, _line_of(data, position), None, message)]) from None
    except yaml.YAMLError as exc:
        raise JobFileError([Problem(display, None, None, f"not valid YAML: {exc}")]) from None
    if root is None:
        raise JobFileError(
            [Problem(display, None, None, "is empty; a job needs name: and prompts:")]
        )
    return root


# ---------------------------------------------------------------------------
# Scalars: our own typing rules over the source text


def plain_value(text: str) -> Scalar:
    """An untagged plain scalar: null, bool, int, float by a few strict spellings, else text."""
    if not text or text in _NULLS:
        return None
    boolean = _BOOLS.get(text)
    if boolean is not None:
        return boolean
    if text[0] in _NUMBER_START:
        if INT_RE.match(text):
            return int(text)
        if _FLOAT_RE.match(text) or text in _SPECIAL_FLOATS:
            return float(text)
    return text


def is_null(node: Node) -> bool:
    return (
        isinstance(node, ScalarNode)
        and node.tag == PLAIN_TAG
        and plain_value(cast(str, node.value)) is None
    )


def kind(node: Node) -> str:
    return "a list" if isinstance(node, SequenceNode) else "a mapping"


def line(node: Node) -> int:
    return cast(int, node.start_mark.line) + 1


def scalar(node: Node, expected: str) -> Scalar:
    if isinstance(node, ScalarNode):
        if node.tag == PLAIN_TAG:
            return plain_value(node.value)
        if node.tag == STR_TAG:  # quoted, block, or tagged !!str
            return cast(str, node.value)
        tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
        raise Invalid(f"YAML tag {tag} is not supported here; write {expected} without it")
    raise Invalid(f"must be {expected}, not {kind(node)}")


def describe(value: Scalar, source: str, *, text_expected: bool = False) -> str:
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        if text_expected:
            return f"the boolean {source} (put it in quotes to mean the text)"
        return f"the boolean {source}"
    if isinstance(value, int | float):
        if text_expected:
            return f"the number {source} (put it in quotes to mean the text)"
        return f"the number {source}"
    return f"the text {value!r}"


def text(node: Node, expected: str = "text") -> str:
    value = scalar(node, expected)
    if isinstance(value, str):
        return value
    raise Invalid(f"must be {expected}, not {describe(value, node.value, text_expected=True)}")


def whole(node: Node, expected: str = "a whole number") -> int:
    value = scalar(node, expected)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and INT_RE.match(value.strip()):
        raise Invalid(f"must be {expected}, not the text {value!r} (remove the quotes)")
    raise Invalid(f"must be {expected}, not {describe(value, node.value)}")


# ---------------------------------------------------------------------------
# Mappings, with every problem reported against one file


class NodeReader:
    """Reads the nodes of one job file, reporting each problem at its line."""

    def __init__(self, display: str, problems: Problems) -> None:
        self.display = display
        self.problems = problems

    def error(self, line: int | None, field: str | None, message: str) -> None:
        self.problems.error(self.display, line, field, message)

    def warn(self, line: int, field: str, message: str) -> None:
        self.problems.warn(self.display, line, field, message)

    def pairs(self, node: MappingNode, label: str, depth: int = 0) -> Pairs:
        """The mapping's keys (as written) to (key node, value node); duplicates reported.

        YAML merge keys (`<<: *anchor`) are honoured: merged keys fill in what the
        mapping does not set itself.
        """
        pairs: Pairs = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.error(
                    line(key_node), label or None, "keys must be names, not " + kind(key_node)
                )
                continue
            key = cast(str, key_node.value)
            if key == "<<" and key_node.tag == PLAIN_TAG:
                merges.append(value_node)
                continue
            first = pairs.get(key)
            if first is not None:
                self.error(
                    line(key_node),
                    field_name(label, key),
                    f"duplicate key (first at line {line(first[0])}); "
                    "YAML would silently keep only one",
                )
                continue
            pairs[key] = (key_node, value_node)
        for merge in merges:
            self._merge(pairs, merge, label, depth)
        return pairs

    def _merge(self, pairs: Pairs, node: Node, label: str, depth: int) -> None:
        if depth >= MAX_MERGE_DEPTH:
            self.error(line(node), label or None, "YAML merges (<<) nested too deep")
            return
        sources = node.value if isinstance(node, SequenceNode) else [node]
        for source in sources:
            if not isinstance(source, MappingNode):
                self.error(line(source), label or None, "<< merges a mapping: write <<: *anchor")
                continue
            for key, pair in self.pairs(source, label, depth + 1).items():
                pairs.setdefault(key, pair)

    def unknown_key(
        self, key: str, key_node: Node, label: str, allowed: Sequence[str], hint: str = ""
    ) -> None:
        """Report a key not in `allowed`: a near miss by name, else `hint`, else the list."""
        message = "unknown key"
        suggestion = suggest(key, allowed)
        if suggestion is not None:
            message += f"; did you mean {suggestion!r}?"
        elif hint:
            message += hint
        else:
            message += f" (allowed here: {', '.join(allowed)})"
        self.error(line(key_node), field_name(label, key), message)
