"""Job files: YAML in, a validated `JobSpec` out, every problem as FILE:LINE: field: message.

We compose the YAML into nodes with libyaml and walk the nodes ourselves instead
of calling `yaml.safe_load`, because the constructed Python objects lose what a
user needs to fix a file, and add surprises of their own:

- every node keeps its line, so each problem names where it is;
- YAML 1.1 types plain scalars by pattern (`16:9` is the sexagesimal 969, `no`
  is False, `007` is octal); we type them from their source text with a few
  plain rules (see `_plain_value`), so `aspect_ratio: 16:9` means what it says;
- a duplicate key is an error at the duplicate, not a silent overwrite;
- aliases are allowed, but a document whose aliases expand beyond a sane size
  (an "alias bomb") is rejected before it is walked.

Memory: the node tree lives only inside `load_job`. A `JobSpec` keeps one small
tuple per inline prompt (sharing the prompt strings and interned settings) and
re-reads prompts files line by line on every `items()` pass, checking that they
did not change since validation. A job of 100,000 prompts therefore holds about
one copy of its inline prompt text and none of its prompts files.

Settings precedence for an item: prompt entry (or CSV row) > `file:` entry >
`defaults` > the catalog's defaults. Within one place an explicit `model` wins
over the deprecated `quality_mode`, and `aspect_ratio` over `orientation`.
"""

from __future__ import annotations

import csv
import datetime
import difflib
import enum
import gc
import hashlib
import re
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from batcher.errors import JobFileError, Problem
from batcher.jobfile.catalog import Catalog
from batcher.jobfile.items import ItemSettings, JobItem, identity_digest, item_key

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml: slower, same results
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

__all__ = ["CSV_COLUMNS", "JobSpec", "collect_jobs", "load_job"]

SETTING_FIELDS: Final = ("model", "resolution", "aspect_ratio", "tool", "image_count")
# Deprecated request fields and the setting each one stands for.
DEPRECATED_FIELDS: Final = {"quality_mode": "model", "orientation": "aspect_ratio"}
TOP_KEYS: Final = ("name", "defaults", "budget", "prompts")
DEFAULTS_KEYS: Final = (*SETTING_FIELDS, *DEPRECATED_FIELDS)
PROMPT_KEYS: Final = ("prompt", *SETTING_FIELDS, "name", *DEPRECATED_FIELDS)
FILE_KEYS: Final = ("file", *SETTING_FIELDS, *DEPRECATED_FIELDS)
CSV_COLUMNS: Final = (
    "prompt",
    "model",
    "resolution",
    "aspect_ratio",
    "tool",
    "image_count",
    "name",
)
PLACEHOLDERS: Final = ("date", "job")

MAX_IMAGE_COUNT: Final = 16  # the API's range is 1..16 whatever the model
MAX_NAME_LENGTH: Final = 200  # the batch name names the output folder
# Alias expansion cap: a document may expand to this many times its own node
# count, and always to this floor, before we call it an alias bomb.
ALIAS_EXPANSION_FACTOR: Final = 10
ALIAS_EXPANSION_FLOOR: Final = 100_000
MAX_MERGE_DEPTH: Final = 20

_STR_TAG: Final = "tag:yaml.org,2002:str"
_SEQ_TAG: Final = "tag:yaml.org,2002:seq"
_MAP_TAG: Final = "tag:yaml.org,2002:map"
_PLAIN_TAG: Final = "tag:batcher,2026:plain"  # an untagged plain scalar, typed by _plain_value

_INT_RE: Final = re.compile(r"[+-]?[0-9]+\Z")
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

_Scalar = str | int | float | bool | None


class _Bad(enum.Enum):
    """Marks a setting whose value was wrong (already reported), so nothing built on it
    is checked again: one mistake, one message."""

    BAD = "bad"


_BAD: Final = _Bad.BAD
_Value = str | int | None | _Bad


class _Invalid(Exception):
    """A value is wrong; the caller knows the file, line and field to report it at."""


# ---------------------------------------------------------------------------
# The job spec


@dataclass(frozen=True)
class JobSpec:
    """A validated job file. `items()` streams its prompts, as often as needed."""

    path: str  # the job file, as the user named it
    name: str  # the resolved batch name (placeholders filled, --batch-name applied)
    budget: int | None
    content_hash: str  # sha256 hex of the job file's bytes
    warnings: tuple[Problem, ...]
    item_count: int
    _sources: tuple[_Inline | _PromptsFile, ...] = field(repr=False, compare=False)

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
            for prompt, settings, line in source.entries(_FailFast()):
                # None only where a problem was reported, and _FailFast raises on those.
                assert settings is not None
                identity = identity_digest(prompt, settings)
                occurrence = seen.get(identity, 0)
                seen[identity] = occurrence + 1
                yield JobItem(
                    ordinal, item_key(batch, identity, occurrence), prompt, settings, path, line
                )
                ordinal += 1


def load_job(
    path: str | Path,
    catalog: Catalog,
    *,
    batch_name: str | None = None,
    today: datetime.date | None = None,
) -> JobSpec:
    """Read and validate a job file and the prompts files it names.

    Raises JobFileError with every problem found (not only the first).
    `batch_name` replaces the file's `name` (placeholders apply to it too);
    `today` fills `{date}` (default: today's local date).
    """
    job_path = Path(path)
    display = str(path)
    raw = _read_job_bytes(job_path, display)
    content_hash = hashlib.sha256(raw).hexdigest()
    problem = _text_problem(raw, display)
    if problem is not None:
        raise JobFileError([problem])
    # Composing and walking allocate hundreds of thousands of small objects that
    # all stay alive until the walk ends; the cyclic collector would rescan them
    # again and again for nothing (it tripled the load time of large jobs).
    with _gc_paused():
        root = _compose(raw, display)
        if b"*" in raw:  # no `*`, no alias: skip the expansion check
            bomb = _alias_problem(root, display)
            if bomb is not None:
                raise JobFileError([bomb])
        del raw  # the tree holds what is needed now
        builder = _JobBuilder(job_path, display, catalog)
        builder.walk(root)
        del root
    template = builder.name_template
    problems = builder.problems
    name = ""
    if batch_name is not None:
        name = _resolve_name(batch_name, job_path, today, problems, display, None, "--batch-name")
    elif template is not None:
        text, line = template
        name = _resolve_name(text, job_path, today, problems, display, line, "name")
    if problems.errors:
        raise JobFileError(_in_file_order(problems.errors, display))
    return JobSpec(
        path=display,
        name=name,
        budget=builder.budget,
        content_hash=content_hash,
        warnings=tuple(_in_file_order(list(problems.warnings()), display)),
        item_count=builder.count,
        _sources=tuple(builder.sources),
    )


def collect_jobs(
    paths: Sequence[str | Path],
    catalog: Catalog,
    *,
    batch_name: str | None = None,
) -> tuple[list[JobSpec], list[Problem]]:
    """Every job file that loads, and every problem of those that do not."""
    jobs: list[JobSpec] = []
    problems: list[Problem] = []
    for path in paths:
        try:
            jobs.append(load_job(path, catalog, batch_name=batch_name))
        except JobFileError as exc:
            problems.extend(exc.problems)
    return jobs, problems


# ---------------------------------------------------------------------------
# Problems


class _Problems:
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


def _in_file_order(problems: list[Problem], job_file: str) -> list[Problem]:
    """Problems by file (the job file first, then prompts files as met), then by line."""
    files = dict.fromkeys([job_file, *(p.path for p in problems)])
    rank = {path: index for index, path in enumerate(files)}
    return sorted(problems, key=lambda p: (rank[p.path], p.line or 0))


class _FailFast(_Problems):
    """For re-reads in `items()`: anything new to complain about means the file changed."""

    def error(self, path: str, line: int | None, field: str | None, message: str) -> None:
        message = f"{message} (the file changed after it was validated)"
        raise JobFileError([Problem(path, line, field, message)])

    def warn(self, path: str, line: int | None, field: str, message: str) -> None:
        pass


# ---------------------------------------------------------------------------
# Reading and composing the YAML


class _JobLoader(_BaseLoader):
    """libyaml's composer with a resolver that leaves plain scalars untyped.

    The stock resolver's regexes are where YAML 1.1 turns `16:9` into 969; we
    type plain scalars ourselves (`_plain_value`). Explicit tags stay as written.
    """

    def resolve(self, kind: type[Node], value: object, implicit: object) -> str:
        if kind is ScalarNode:
            plain = cast(tuple[bool, bool], implicit)[0]
            return _PLAIN_TAG if plain else _STR_TAG
        return _SEQ_TAG if kind is SequenceNode else _MAP_TAG


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
        return path.read_bytes()
    except FileNotFoundError:
        message = "no such job file"
    except IsADirectoryError:
        message = "is a folder, not a job file"
    except OSError as exc:
        message = f"cannot read the job file: {exc.strerror or exc}"
    raise JobFileError([Problem(display, None, None, message)])


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _text_problem(data: bytes, display: str) -> Problem | None:
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


def _compose(data: bytes, display: str) -> Node:
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


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return cast(list[Node], node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _alias_problem(root: Node, display: str) -> Problem | None:
    """Reject alias bombs and recursive aliases before anything walks the tree.

    Aliases share nodes, so the composed graph stays small while its expansion
    can be astronomically large. The expanded size of every node is computed
    once per distinct node (post-order, iterative: nesting may be deep), which
    costs the size of the file, not of the expansion.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    order: list[Node] = []
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        ident = id(node)
        if finished:
            sizes[ident] = 1 + sum(sizes[id(child)] for child in _children(node))
            active.discard(ident)
            order.append(node)
            continue
        if ident in sizes:
            continue
        if ident in active:
            return Problem(
                display,
                node.start_mark.line + 1,
                None,
                "a YAML alias refers to a node that contains it (recursive anchor)",
            )
        active.add(ident)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    cap = max(ALIAS_EXPANSION_FACTOR * len(sizes), ALIAS_EXPANSION_FLOOR)
    if sizes[id(root)] <= cap:
        return None
    # Name the innermost node that alone blows the cap: that is where the bomb is.
    culprit = next(node for node in order if sizes[id(node)] > cap)
    return Problem(
        display,
        culprit.start_mark.line + 1,
        None,
        f"YAML aliases here expand to {sizes[id(culprit)]:,} nodes, more than the "
        f"{cap:,} allowed for a document of {len(sizes):,} nodes (an alias bomb?)",
    )


# ---------------------------------------------------------------------------
# Scalars: our own typing rules over the source text


def _plain_value(text: str) -> _Scalar:
    """An untagged plain scalar: null, bool, int, float by a few strict spellings, else text."""
    if not text or text in _NULLS:
        return None
    boolean = _BOOLS.get(text)
    if boolean is not None:
        return boolean
    if text[0] in _NUMBER_START:
        if _INT_RE.match(text):
            return int(text)
        if _FLOAT_RE.match(text) or text in _SPECIAL_FLOATS:
            return float(text)
    return text


def _is_null(node: Node) -> bool:
    return (
        isinstance(node, ScalarNode)
        and node.tag == _PLAIN_TAG
        and _plain_value(cast(str, node.value)) is None
    )


def _kind(node: Node) -> str:
    return "a list" if isinstance(node, SequenceNode) else "a mapping"


def _scalar(node: Node, expected: str) -> _Scalar:
    if isinstance(node, ScalarNode):
        if node.tag == _PLAIN_TAG:
            return _plain_value(node.value)
        if node.tag == _STR_TAG:  # quoted, block, or tagged !!str
            return cast(str, node.value)
        tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
        raise _Invalid(f"YAML tag {tag} is not supported here; write {expected} without it")
    raise _Invalid(f"must be {expected}, not {_kind(node)}")


def _describe(value: _Scalar, source: str, *, text_expected: bool = False) -> str:
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


def _text(node: Node, expected: str = "text") -> str:
    value = _scalar(node, expected)
    if isinstance(value, str):
        return value
    raise _Invalid(f"must be {expected}, not {_describe(value, node.value, text_expected=True)}")


def _whole(node: Node, expected: str = "a whole number") -> int:
    value = _scalar(node, expected)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT_RE.match(value.strip()):
        raise _Invalid(f"must be {expected}, not the text {value!r} (remove the quotes)")
    raise _Invalid(f"must be {expected}, not {_describe(value, node.value)}")


def _line(node: Node) -> int:
    return cast(int, node.start_mark.line) + 1


def _field(label: str, key: str) -> str:
    return f"{label}.{key}" if label else key


def _suggest(value: str, allowed: Iterable[str]) -> str | None:
    choices = list(allowed)
    for choice in choices:  # a case slip is the likeliest mistake
        if choice.lower() == value.lower():
            return choice
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _not_one_of(what: str, value: str, allowed: Sequence[str], *, list_all: bool = True) -> str:
    suggestion = _suggest(value, allowed)
    message = f"unknown {what} {value!r}"
    if suggestion is not None:
        message += f"; did you mean {suggestion!r}?"
        if not list_all:
            return message
    return f"{message} (allowed: {', '.join(allowed)})"


# ---------------------------------------------------------------------------
# Settings: per-field rules, layers and their merge


@dataclass(frozen=True, slots=True)
class _Layer:
    """What one place of a job sets: `defaults`, a `file:` entry, a CSV row, a prompt entry."""

    path: str
    line: int | None
    label: str  # field prefix in problems: "defaults", "prompts[3]", "" for a CSV row
    values: dict[str, _Value]
    lines: dict[str, int]

    def where(self, setting: str) -> str:
        place = self.label or "the CSV row"
        return f"set in {place} at {self.path}:{self.lines.get(setting, self.line)}"


_EMPTY: Final[dict[str, _Value]] = {}


class _Rules:
    """The catalog's rules for single settings, and the merged settings of items.

    Settings are interned: the 100,000 items of a big job share a handful of
    `ItemSettings` objects, and the cross-field check runs once per combination.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.models = tuple(catalog.models)
        self.resolutions = catalog.accepted_resolutions
        self.tools = tuple(sorted(catalog.tools))
        self.base: dict[str, _Value] = {
            "model": catalog.default_model,
            "resolution": None,
            "aspect_ratio": catalog.default_aspect_ratio,
            "tool": catalog.default_tool,
            "image_count": 1,
            "name": None,
        }
        self._interned: dict[tuple[_Value, ...], ItemSettings] = {}
        self._model_issues: dict[tuple[_Value, ...], list[tuple[str, str]]] = {}

    def check(self, setting: str, value: _Scalar, source: str) -> tuple[str | int, str | None]:
        """One setting's value checked alone: (the value to use, a warning or None).

        Deprecated fields come back translated (quality_mode -> a model name).
        Raises _Invalid with a message that says what is allowed.
        """
        if setting == "image_count":
            if isinstance(value, str) and _INT_RE.match(value.strip()):
                raise _Invalid(
                    f"must be a whole number, not the text {value!r} (remove the quotes)"
                )
            if not isinstance(value, int) or isinstance(value, bool):
                raise _Invalid(f"must be a whole number, not {_describe(value, source)}")
            if not 1 <= value <= MAX_IMAGE_COUNT:
                raise _Invalid(f"must be from 1 to {MAX_IMAGE_COUNT}, not {value}")
            return value, None
        if not isinstance(value, str):
            raise _Invalid(f"must be text, not {_describe(value, source, text_expected=True)}")
        if setting == "name":
            if not value.strip():
                raise _Invalid("must not be empty")
            return value, None
        if setting == "model":
            return self._model(value)
        if setting == "resolution":
            if value not in self.resolutions:
                raise _Invalid(_not_one_of("resolution", value, self.resolutions))
            if value in self.catalog.deprecated_resolutions:
                return value, (
                    f"resolution {value!r} is deprecated: the server picks the resolution; "
                    "leave resolution out for the same effect"
                )
            return value, None
        if setting == "aspect_ratio":
            if value not in self.catalog.aspect_ratios:
                raise _Invalid(_not_one_of("aspect ratio", value, self.catalog.aspect_ratios))
            return value, None
        if setting == "tool":
            if value not in self.catalog.tools:
                raise _Invalid(_not_one_of("tool", value, self.tools, list_all=False))
            return value, None
        if setting == "quality_mode":
            return self._deprecated(setting, value, self.catalog.quality_modes, "model")
        if setting == "orientation":
            return self._deprecated(setting, value, self.catalog.orientations, "aspect_ratio")
        raise AssertionError(setting)  # pragma: no cover - callers pass known keys only

    def _model(self, value: str) -> tuple[str, str | None]:
        info = self.catalog.model(value)
        if info is None:
            raise _Invalid(_not_one_of("model", value, self.models, list_all=False))
        if info.deprecated:
            return value, f"model {value!r} is deprecated; the API still accepts it for now"
        return value, None

    def _deprecated(
        self, setting: str, value: str, mapping: Mapping[str, str], target: str
    ) -> tuple[str, str]:
        if value not in mapping:
            raise _Invalid(_not_one_of(setting.replace("_", " "), value, tuple(mapping)))
        meaning = mapping[value]
        warning = f"deprecated; {value!r} means {target}: {meaning}, so write that instead"
        return meaning, warning

    def settings(
        self, merged: Mapping[str, _Value], chain: Sequence[_Layer], problems: _Problems
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
        if _BAD in issue_key:  # a wrong value, already reported where it was written
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
        if _BAD in key:  # a wrong aspect ratio, tool or name: reported, nothing to build
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
    merged: Mapping[str, _Value],
    chain: Sequence[_Layer],
    problems: _Problems,
) -> None:
    """Report a model/resolution/image_count clash at the most specific place that set
    one of the two, and say where the other one came from."""
    for setting, message in issues:
        involved = ("model", setting)
        reporter = next(
            (layer for layer in chain if any(s in layer.values for s in involved)), chain[0]
        )
        hints = []
        for other in dict.fromkeys(involved):
            if other in reporter.values:
                continue
            origin = next((layer for layer in chain if other in layer.values), None)
            where = origin.where(other) if origin is not None else "the catalog's default"
            hints.append(f"{other} {merged[other]!r} is {where}")
        if hints:
            message = f"{message} ({'; '.join(hints)})"
        problems.error(reporter.path, reporter.line, _field(reporter.label, setting), message)


# ---------------------------------------------------------------------------
# Sources of prompts


@dataclass(frozen=True, slots=True)
class _Inline:
    """A run of consecutive prompts written in the job file itself."""

    display: str
    prompts: list[tuple[str, ItemSettings, int]]  # (prompt, settings, line)

    def entries(self, problems: _Problems) -> Iterator[tuple[str, ItemSettings | None, int]]:
        return iter(self.prompts)


class _PromptsFile:
    """A `file:` entry: a text file (one prompt per line) or a CSV file with a header.

    Read line by line on the validation pass and again on every `items()` pass;
    the digest taken on the first pass proves later passes read the same bytes.
    """

    def __init__(
        self,
        path: Path,
        display: str,
        merged: dict[str, _Value],
        chain: tuple[_Layer, ...],
        rules: _Rules,
    ) -> None:
        self.path = path
        self.display = display
        self.is_csv = path.suffix.lower() == ".csv"
        self.merged = merged  # settings of the `file:` entry over defaults and the catalog
        self.chain = chain  # (the file entry, defaults), for problem reports
        self.rules = rules
        self.digest: bytes | None = None  # set by the validation pass
        self.size = -1

    def entries(self, problems: _Problems) -> Iterator[tuple[str, ItemSettings | None, int]]:
        """Every prompt of the file; settings are None where a problem was reported."""
        validating = self.digest is None
        if not validating and _file_size(self.path) != self.size:
            problems.error(self.display, None, None, "has a different size now")
        hasher = hashlib.sha256()
        lines = _lines(self.path, self.display, problems, hasher, self.chain[0])
        yield from self._csv(lines, problems) if self.is_csv else self._text(lines, problems)
        if validating:
            self.digest = hasher.digest()
            self.size = _file_size(self.path)
        elif hasher.digest() != self.digest:
            problems.error(self.display, None, None, "has different content now")

    def _text(
        self, lines: Iterator[tuple[int, str]], problems: _Problems
    ) -> Iterator[tuple[str, ItemSettings | None, int]]:
        settings = self.rules.settings(self.merged, self.chain, problems)
        for number, text in lines:
            prompt = text.strip()
            if prompt and prompt[0] != "#":
                yield prompt, settings, number

    def _csv(
        self, lines: Iterator[tuple[int, str]], problems: _Problems
    ) -> Iterator[tuple[str, ItemSettings | None, int]]:
        reader = csv.reader(text for _, text in lines)
        header: list[str] | None = None
        end = 0
        try:
            for row in reader:
                start, end = end + 1, reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if header is None:
                    header = _csv_header(row, self.display, start, problems)
                    if header is None:
                        return
                    continue
                entry = self._csv_row(row, header, start, problems)
                if entry is not None:
                    yield entry
        except csv.Error as exc:
            problems.error(self.display, reader.line_num, None, f"not valid CSV: {exc}")

    def _csv_row(
        self, row: list[str], header: list[str], line: int, problems: _Problems
    ) -> tuple[str, ItemSettings | None, int] | None:
        display = self.display
        if len(row) > len(header) and any(cell.strip() for cell in row[len(header) :]):
            problems.error(
                display,
                line,
                None,
                f"the row has {len(row)} cells but the header names {len(header)} columns",
            )
            return None
        values: dict[str, _Value] = {}
        prompt = ""
        for column, cell in zip(header, row, strict=False):
            text = cell.strip()
            if column == "prompt":
                # A quoted cell may span lines; Windows line ends inside it become plain ones.
                prompt = text.replace("\r\n", "\n") if "\r" in text else text
                continue
            if not text:  # an empty cell inherits
                continue
            value: _Scalar = int(text) if column == "image_count" and _INT_RE.match(text) else text
            try:
                checked, warning = self.rules.check(column, value, text)
            except _Invalid as exc:
                problems.error(display, line, column, str(exc))
                values[column] = _BAD
                continue
            if warning is not None:
                problems.warn(display, line, column, warning)
            values[column] = checked
        if not prompt:
            problems.error(display, line, "prompt", "empty prompt")
            return None
        if not values:
            return prompt, self.rules.settings(self.merged, self.chain, problems), line
        row_layer = _Layer(display, line, "", values, dict.fromkeys(values, line))
        merged = {**self.merged, **values}
        return prompt, self.rules.settings(merged, (row_layer, *self.chain), problems), line


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _lines(
    path: Path, display: str, problems: _Problems, hasher: hashlib._Hash, entry: _Layer
) -> Iterator[tuple[int, str]]:
    """(line number, text with its line ending) of a UTF-8 text file, hashing as it goes.

    Stops at the first NUL byte or undecodable line: one message says it all.
    """
    try:
        stream = path.open("rb")
    except OSError as exc:
        problems.error(
            entry.path,
            entry.lines.get("file", entry.line),
            _field(entry.label, "file"),
            f"cannot read {display}: {exc.strerror or exc}",
        )
        return
    with stream:
        for number, raw in enumerate(stream, start=1):
            hasher.update(raw)
            if b"\0" in raw:
                problems.error(
                    display, number, None, "contains NUL bytes: a binary file, not prompts text"
                )
                return
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.error(
                    display,
                    number,
                    None,
                    f"is not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8",
                )
                return
            if number == 1 and text.startswith("\ufeff"):  # a BOM from Windows editors
                text = text[1:]
            yield number, text


def _csv_header(row: list[str], display: str, line: int, problems: _Problems) -> list[str] | None:
    columns = [cell.strip() for cell in row]
    if not any(_suggest(column, CSV_COLUMNS) for column in columns if column):
        # Nothing here even looks like a column name: most likely a file of prompts
        # without a header row, whose first prompt must not be taken for one.
        problems.error(
            display,
            line,
            None,
            "the first row must be a header naming the columns (a prompt column and any of "
            f"{', '.join(CSV_COLUMNS[1:])}); this one names none of them",
        )
        return None
    ok = True
    for position, column in enumerate(columns, start=1):
        if not column:
            problems.error(display, line, None, f"column {position} of the header has no name")
            ok = False
        elif column not in CSV_COLUMNS:
            message = _not_one_of("column", column, CSV_COLUMNS)
            if ";" in column or "\t" in column:
                message += "; columns must be separated by commas"
            problems.error(display, line, column, message)
            ok = False
        elif columns.index(column) < position - 1:
            problems.error(display, line, column, "the header names this column twice")
            ok = False
    if "prompt" not in columns:
        problems.error(
            display,
            line,
            "prompt",
            "the header row has no prompt column; the first row names the columns, "
            f"among: {', '.join(CSV_COLUMNS)}",
        )
        ok = False
    return columns if ok else None


# ---------------------------------------------------------------------------
# Walking the job file


class _JobBuilder:
    """One pass over the composed job file: checks everything, keeps only what items need."""

    def __init__(self, job_path: Path, display: str, catalog: Catalog) -> None:
        self.job_path = job_path
        self.display = display
        self.rules = _Rules(catalog)
        self.problems = _Problems()
        self.sources: list[_Inline | _PromptsFile] = []
        self.count = 0
        self.budget: int | None = None
        self.name_template: tuple[str, int] | None = None
        self._defaults = _Layer(display, None, "defaults", {}, {})
        self._merged: dict[str, _Value] = dict(self.rules.base)
        self._bare_settings: ItemSettings | None = None
        self._inline: list[tuple[str, ItemSettings, int]] | None = None

    # -- top level

    def walk(self, root: Node) -> None:
        if not isinstance(root, MappingNode):
            found = _kind(root) if not isinstance(root, ScalarNode) else "a single value"
            self._error(
                _line(root),
                None,
                f"the top level must be a mapping with name: and prompts:, not {found}",
            )
            return
        pairs = self._pairs(root, "")
        for key, (key_node, _) in pairs.items():
            if key not in TOP_KEYS:
                self._unknown_key(key, key_node, "", TOP_KEYS)
        top_line = _line(root)
        self._name(pairs.get("name"), top_line)
        if "budget" in pairs:
            self._budget(pairs["budget"][1])
        if "defaults" in pairs:
            self._defaults_mapping(*pairs["defaults"])
        if "prompts" not in pairs:
            self._error(top_line, "prompts", "missing: a job needs a list of prompts")
            return
        key_node, prompts = pairs["prompts"]
        self._prompts(key_node, prompts)

    def _name(self, pair: tuple[Node, Node] | None, top_line: int) -> None:
        if pair is None:
            self._error(top_line, "name", "missing: a job needs a batch name (name: ...)")
            return
        node = pair[1]
        if _is_null(node):
            self._error(
                _line(node), "name", "has no value: name the batch (name: nightly-products)"
            )
            return
        try:
            text = _text(node, "text (the batch name)")
        except _Invalid as exc:
            self._error(_line(node), "name", str(exc))
            return
        self.name_template = (text, _line(node))

    def _budget(self, node: Node) -> None:
        if _is_null(node):
            self._error(
                _line(node), "budget", "has no value: give a number of credits, or remove the key"
            )
            return
        try:
            budget = _whole(node, "a whole number of credits")
        except _Invalid as exc:
            self._error(_line(node), "budget", str(exc))
            return
        if budget < 0:
            self._error(_line(node), "budget", f"must not be negative, not {budget}")
            return
        self.budget = budget

    def _defaults_mapping(self, key_node: Node, node: Node) -> None:
        if _is_null(node):
            return  # `defaults:` with everything commented out
        if not isinstance(node, MappingNode):
            self._error(
                _line(node), "defaults", "must be a mapping of settings (model:, resolution:, ...)"
            )
            return
        pairs = self._pairs(node, "defaults")
        self._defaults = self._layer(pairs, "defaults", _line(key_node), DEFAULTS_KEYS)
        self._merged = {**self.rules.base, **self._defaults.values}

    # -- prompts

    def _prompts(self, key_node: Node, node: Node) -> None:
        if _is_null(node):
            self._error(
                _line(key_node), "prompts", "the list is empty; a job needs at least one prompt"
            )
            return
        if not isinstance(node, SequenceNode):
            self._error(
                _line(node),
                "prompts",
                "must be a list, one entry per line starting with '- '",
            )
            return
        if not node.value:
            self._error(
                _line(key_node), "prompts", "the list is empty; a job needs at least one prompt"
            )
            return
        for index, entry in enumerate(node.value):
            label = f"prompts[{index}]"
            if isinstance(entry, ScalarNode):
                self._bare_prompt(entry, label)
            elif isinstance(entry, MappingNode):
                self._mapping_entry(entry, label)
            else:
                self._error(
                    _line(entry),
                    label,
                    "must be a prompt (text) or a mapping with prompt: or file:, not a list",
                )
        if self.count == 0 and not self.problems.errors:
            self._error(
                _line(key_node), "prompts", "no prompts at all: the prompts files hold none"
            )

    def _bare_prompt(self, node: ScalarNode, label: str) -> None:
        prompt = self._prompt_text(node, label)
        if prompt is None:
            return
        line = _line(node)
        settings = self._bare_settings
        if settings is None:
            entry = _Layer(self.display, line, label, _EMPTY, {})
            settings = self.rules.settings(self._merged, (entry, self._defaults), self.problems)
            self._bare_settings = settings
        self._add_inline(prompt, settings, line)

    def _mapping_entry(self, node: MappingNode, label: str) -> None:
        pairs = self._pairs(node, label)
        has_prompt, has_file = "prompt" in pairs, "file" in pairs
        if has_prompt and has_file:
            self._error(_line(node), label, "has both prompt: and file:; use one per entry")
        elif has_prompt:
            self._prompt_entry(node, pairs, label)
        elif has_file:
            self._file_entry(node, pairs, label)
        else:
            self._neither(node, pairs, label)

    def _neither(self, node: MappingNode, pairs: dict[str, tuple[Node, Node]], label: str) -> None:
        unknown = [key for key in pairs if key not in PROMPT_KEYS]
        if len(pairs) == 1 and unknown:
            # `- A cat: on a mat` is YAML for a mapping; the user meant one prompt.
            self._error(
                _line(node),
                label,
                "is a mapping, not a prompt; if the prompt contains ': ', put it in quotes",
            )
            return
        for key in unknown:
            self._unknown_key(key, pairs[key][0], label, PROMPT_KEYS + FILE_KEYS[:1])
        if not unknown:
            self._error(_line(node), label, "needs prompt: (the text) or file: (a prompts file)")

    def _prompt_entry(
        self, node: MappingNode, pairs: dict[str, tuple[Node, Node]], label: str
    ) -> None:
        line = _line(node)
        prompt = self._prompt_text(pairs["prompt"][1], f"{label}.prompt")
        layer = self._layer(pairs, label, line, PROMPT_KEYS)
        if not layer.values:
            settings = self._bare_settings
            if settings is None:
                settings = self.rules.settings(self._merged, (layer, self._defaults), self.problems)
                self._bare_settings = settings
        else:
            merged = {**self._merged, **layer.values}
            settings = self.rules.settings(merged, (layer, self._defaults), self.problems)
        if prompt is not None:
            self._add_inline(prompt, settings, line)

    def _add_inline(self, prompt: str, settings: ItemSettings | None, line: int) -> None:
        self.count += 1
        if settings is None:
            return  # the job fails; keep counting to say so once
        if self._inline is None:
            self._inline = []
            self.sources.append(_Inline(self.display, self._inline))
        self._inline.append((prompt, settings, line))

    def _prompt_text(self, node: Node, field: str) -> str | None:
        if _is_null(node):
            self._error(_line(node), field, "empty prompt")
            return None
        try:
            text = _text(node, "text (the prompt)")
        except _Invalid as exc:
            self._error(_line(node), field, str(exc))
            return None
        prompt = text.strip()  # the same object when there is nothing to strip
        if not prompt:
            self._error(_line(node), field, "empty prompt")
            return None
        return prompt

    def _file_entry(
        self, node: MappingNode, pairs: dict[str, tuple[Node, Node]], label: str
    ) -> None:
        line = _line(node)
        file_node = pairs["file"][1]
        field = f"{label}.file"
        layer = self._layer(pairs, label, line, FILE_KEYS)
        layer.lines["file"] = _line(file_node)
        try:
            name = _text(file_node, "a file path").strip()
        except _Invalid as exc:
            self._error(_line(file_node), field, str(exc))
            return
        if not name:
            self._error(_line(file_node), field, "empty file path")
            return
        target = self.job_path.parent / name
        display = str(Path(self.display).parent / name)
        problem = _unreadable(target, display)
        if problem is not None:
            self._error(_line(file_node), field, problem)
            return
        merged = {**self._merged, **layer.values}
        source = _PromptsFile(target, display, merged, (layer, self._defaults), self.rules)
        found = sum(1 for _ in source.entries(self.problems))
        if found == 0 and source.digest is not None:
            self.problems.warn(self.display, _line(file_node), field, f"{display} holds no prompts")
        self.count += found
        self.sources.append(source)
        self._inline = None  # later inline prompts start a new run after this file

    # -- mappings and settings

    def _pairs(self, node: MappingNode, label: str, depth: int = 0) -> dict[str, tuple[Node, Node]]:
        """The mapping's keys (as written) to (key node, value node); duplicates reported.

        YAML merge keys (`<<: *anchor`) are honoured: merged keys fill in what the
        mapping does not set itself.
        """
        pairs: dict[str, tuple[Node, Node]] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self._error(
                    _line(key_node), label or None, "keys must be names, not " + _kind(key_node)
                )
                continue
            key = cast(str, key_node.value)
            if key == "<<" and key_node.tag == _PLAIN_TAG:
                merges.append(value_node)
                continue
            first = pairs.get(key)
            if first is not None:
                self._error(
                    _line(key_node),
                    _field(label, key),
                    f"duplicate key (first at line {_line(first[0])}); "
                    "YAML would silently keep only one",
                )
                continue
            pairs[key] = (key_node, value_node)
        for merge in merges:
            self._merge(pairs, merge, label, depth)
        return pairs

    def _merge(
        self, pairs: dict[str, tuple[Node, Node]], node: Node, label: str, depth: int
    ) -> None:
        if depth >= MAX_MERGE_DEPTH:
            self._error(_line(node), label or None, "YAML merges (<<) nested too deep")
            return
        sources = node.value if isinstance(node, SequenceNode) else [node]
        for source in sources:
            if not isinstance(source, MappingNode):
                self._error(_line(source), label or None, "<< merges a mapping: write <<: *anchor")
                continue
            for key, pair in self._pairs(source, label, depth + 1).items():
                pairs.setdefault(key, pair)

    def _layer(
        self,
        pairs: dict[str, tuple[Node, Node]],
        label: str,
        line: int,
        allowed: tuple[str, ...],
    ) -> _Layer:
        values: dict[str, _Value] = {}
        lines: dict[str, int] = {}
        deprecated: list[tuple[str, str, _Value, int, str | None]] = []
        rules = self.rules
        for key, (key_node, value_node) in pairs.items():
            if key in ("prompt", "file") and key in allowed:
                continue  # the caller reads these
            if key not in allowed:
                self._unknown_key(key, key_node, label, allowed)
                continue
            value_line = _line(value_node)
            value: _Value
            warning: str | None = None
            try:
                raw = _scalar(value_node, "a single value")
                value, warning = rules.check(key, raw, cast(str, value_node.value))
            except _Invalid as exc:
                self._error(value_line, _field(label, key), str(exc))
                value = _BAD
            target = DEPRECATED_FIELDS.get(key)
            if target is None:
                values[key] = value
                lines[key] = value_line
                if warning is not None:
                    self._warn(value_line, _field(label, key), warning)
            else:
                deprecated.append((key, target, value, value_line, warning))
        for key, target, value, value_line, warning in deprecated:
            if target in values:
                self._warn(
                    value_line,
                    _field(label, key),
                    f"deprecated, and ignored here because {target} is set",
                )
                continue
            values[target] = value
            lines[target] = value_line
            if warning is not None:
                self._warn(value_line, _field(label, key), warning)
        return _Layer(self.display, line, label, values, lines)

    def _unknown_key(self, key: str, key_node: Node, label: str, allowed: Sequence[str]) -> None:
        message = "unknown key"
        suggestion = _suggest(key, allowed)
        if suggestion is not None:
            message += f"; did you mean {suggestion!r}?"
        elif label == "" and key in PROMPT_KEYS:
            message += "; settings for every prompt go under defaults:"
        else:
            message += f" (allowed here: {', '.join(allowed)})"
        self._error(_line(key_node), _field(label, key), message)

    def _error(self, line: int | None, field: str | None, message: str) -> None:
        self.problems.error(self.display, line, field, message)

    def _warn(self, line: int, field: str, message: str) -> None:
        self.problems.warn(self.display, line, field, message)


def _unreadable(path: Path, display: str) -> str | None:
    try:
        if path.is_dir():
            return f"{display} is a folder, not a prompts file"
        with path.open("rb"):
            pass
    except FileNotFoundError:
        return f"no such file: {display} (a file: path is relative to the job file's folder)"
    except OSError as exc:
        return f"cannot read {display}: {exc.strerror or exc}"
    return None


# ---------------------------------------------------------------------------
# The batch name


def _resolve_name(
    template: str,
    job_path: Path,
    today: datetime.date | None,
    problems: _Problems,
    display: str,
    line: int | None,
    field: str,
) -> str:
    try:
        name = _expand(template, job_path.stem, today or datetime.date.today())
        _check_name(name)
    except _Invalid as exc:
        problems.error(display, line, field, str(exc))
        return ""
    return name


def _expand(template: str, job_stem: str, today: datetime.date) -> str:
    """Fill `{date}` (YYYY-MM-DD) and `{job}` (the job file's stem); `{{`/`}}` are braces."""
    values = {"date": today.isoformat(), "job": job_stem}
    known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
    parts: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise _Invalid(
            f"{exc}; placeholders are {known} (write {{{{ or }}}} for a brace)"
        ) from None
    for literal, placeholder, spec, conversion in parsed:
        parts.append(literal)
        if placeholder is None:
            continue
        if placeholder not in values or spec or conversion:
            written = "{" + placeholder + (f"!{conversion}" if conversion else "")
            written += (f":{spec}" if spec else "") + "}"
            message = f"unknown placeholder {written}"
            suggestion = _suggest(placeholder, PLACEHOLDERS)
            if suggestion is not None and not (spec or conversion):
                message += f"; did you mean {{{suggestion}}}?"
            raise _Invalid(f"{message} (known: {known})")
        parts.append(values[placeholder])
    return "".join(parts)


def _check_name(name: str) -> None:
    if not name.strip():
        raise _Invalid("must not be empty")
    if name != name.strip():
        raise _Invalid(f"must not start or end with spaces: {name!r}")
    if name in (".", "..") or any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in name):
        raise _Invalid(
            f"{name!r} cannot name a batch: it names the output folder, so no / \\ "
            "or control characters"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise _Invalid(f"is {len(name)} characters long; at most {MAX_NAME_LENGTH}")
