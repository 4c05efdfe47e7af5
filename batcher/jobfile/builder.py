"""One pass over a composed job file: checks everything, keeps only what items need.

The top level (name, budget, max_items, defaults, vars, prompts) and each entry
of `prompts:` (a bare string, `prompt:`, `file:` or `template:`) are read here;
settings, prompts files and templates each have their own module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from batcher.jobfile.catalog import Catalog
from batcher.jobfile.items import ItemSettings
from batcher.jobfile.problems import Invalid, Problems
from batcher.jobfile.prompts_files import PromptsFile, unreadable
from batcher.jobfile.settings_rules import (
    DEPRECATED_FIELDS,
    EMPTY,
    SETTING_FIELDS,
    Layer,
    Rules,
    Value,
    read_layer,
)
from batcher.jobfile.spec import DEFAULT_MAX_ITEMS, InlineRun, Source, TemplateSummary
from batcher.jobfile.template_entries import TemplateReader
from batcher.jobfile.variables import VarTable, read_vars
from batcher.jobfile.yaml_nodes import (
    MappingNode,
    Node,
    NodeReader,
    Pairs,
    ScalarNode,
    SequenceNode,
    is_null,
    kind,
    line,
    text,
    whole,
)
from batcher.settings import MAX_BUDGET

__all__ = ["JobBuilder"]

TOP_KEYS: Final = ("name", "defaults", "budget", "max_items", "vars", "prompts")
DEFAULTS_KEYS: Final = (*SETTING_FIELDS, *DEPRECATED_FIELDS)
PROMPT_KEYS: Final = ("prompt", *SETTING_FIELDS, "name", *DEPRECATED_FIELDS)
FILE_KEYS: Final = ("file", *SETTING_FIELDS, *DEPRECATED_FIELDS)
ENTRY_KINDS: Final = ("prompt", "file", "template")


@dataclass(frozen=True, slots=True)
class _Size:
    """An entry that makes many items, for the message when the job is too large."""

    line: int
    label: str
    items: int
    detail: str  # "from prompts/x.txt", "product 40 x color 3"


class JobBuilder:
    """Walks a job file's root node once; `problems`, `sources` and counts come out."""

    def __init__(
        self, job_path: Path, display: str, catalog: Catalog, max_items: int | None
    ) -> None:
        self.job_path = job_path
        self.display = display
        self.rules = Rules(catalog)
        self.problems = Problems()
        self.reader = NodeReader(display, self.problems)
        self.sources: list[Source] = []
        self.templates: list[TemplateSummary] = []
        self.count = 0
        self.budget: int | None = None
        self.name_template: tuple[str, int] | None = None
        self._max_items_flag = max_items
        self.max_items = max_items if max_items is not None else DEFAULT_MAX_ITEMS
        self._max_items_line: int | None = None
        self._sizes: list[_Size] = []
        self._defaults = Layer(display, None, "defaults", {}, {}, "defaults")
        self._merged: dict[str, Value] = dict(self.rules.base)
        self._top_vars: VarTable | None = {}
        self._templates: TemplateReader | None = None
        self._bare_settings: ItemSettings | None = None
        self._inline: list[tuple[str, ItemSettings, int]] | None = None

    # -- top level

    def walk(self, root: Node) -> None:
        if not isinstance(root, MappingNode):
            found = kind(root) if not isinstance(root, ScalarNode) else "a single value"
            self._error(
                line(root),
                None,
                f"the top level must be a mapping with name: and prompts:, not {found}",
            )
            return
        pairs = self.reader.pairs(root, "")
        for key, (key_node, _) in pairs.items():
            if key not in TOP_KEYS:
                hint = ""
                if key in PROMPT_KEYS:
                    hint = "; settings for every prompt go under defaults:"
                self.reader.unknown_key(key, key_node, "", TOP_KEYS, hint)
        top_line = line(root)
        self._name(pairs.get("name"), top_line)
        if "budget" in pairs:
            self._budget(pairs["budget"][1])
        if "max_items" in pairs:
            self._max_items(pairs["max_items"][1])
        if "defaults" in pairs:
            self._defaults_mapping(*pairs["defaults"])
        if "vars" in pairs:
            self._top_vars = read_vars(self.reader, pairs["vars"][1], "vars", self._folder)
        if "prompts" not in pairs:
            self._error(top_line, "prompts", "missing: a job needs a list of prompts")
            return
        key_node, prompts = pairs["prompts"]
        self._prompts(key_node, prompts)
        self._check_size(line(key_node))

    @property
    def _folder(self) -> Path:
        return self.job_path.parent

    def _name(self, pair: tuple[Node, Node] | None, top_line: int) -> None:
        if pair is None:
            self._error(top_line, "name", "missing: a job needs a batch name (name: ...)")
            return
        node = pair[1]
        if is_null(node):
            self._error(line(node), "name", "has no value: name the batch (name: nightly-products)")
            return
        try:
            name = text(node, "text (the batch name)")
        except Invalid as exc:
            self._error(line(node), "name", str(exc))
            return
        self.name_template = (name, line(node))

    def _budget(self, node: Node) -> None:
        if is_null(node):
            self._error(
                line(node), "budget", "has no value: give a number of credits, or remove the key"
            )
            return
        try:
            budget = whole(node, "a whole number of credits")
        except Invalid as exc:
            self._error(line(node), "budget", str(exc))
            return
        if budget < 0:
            self._error(line(node), "budget", f"must not be negative, not {budget}")
            return
        if budget > MAX_BUDGET:
            self._error(
                line(node), "budget", f"{budget} is beyond any account: at most {MAX_BUDGET:,}"
            )
            return
        self.budget = budget

    def _max_items(self, node: Node) -> None:
        try:
            limit = whole(node, "a whole number of items")
        except Invalid as exc:
            self._error(line(node), "max_items", str(exc))
            return
        if limit < 1:
            self._error(line(node), "max_items", f"must be at least 1, not {limit}")
            return
        if self._max_items_flag is None:  # --max-items wins over the file
            self.max_items = limit
            self._max_items_line = line(node)

    def _defaults_mapping(self, key_node: Node, node: Node) -> None:
        if is_null(node):
            return  # `defaults:` with everything commented out
        if not isinstance(node, MappingNode):
            self._error(
                line(node), "defaults", "must be a mapping of settings (model:, resolution:, ...)"
            )
            return
        pairs = self.reader.pairs(node, "defaults")
        self._defaults = read_layer(
            self.reader,
            self.rules,
            pairs,
            "defaults",
            line(key_node),
            DEFAULTS_KEYS,
            kind="defaults",
        )
        self._merged = {**self.rules.base, **self._defaults.values}

    def _check_size(self, prompts_line: int) -> None:
        """Refuse a job larger than max_items, naming each entry that makes many items."""
        limit = self.max_items
        if self.count <= limit:
            return
        if self._max_items_flag is not None:
            limit_text = f"--max-items {limit:,}; pass a larger --max-items"
        else:
            at = f", set at line {self._max_items_line}" if self._max_items_line else " by default"
            limit_text = f"max_items ({limit:,}{at}); raise max_items: or pass --max-items"
        self._error(
            prompts_line,
            "prompts",
            f"the job makes {self.count:,} items, more than {limit_text} if that many is meant",
        )
        for size in self._sizes:
            self._error(size.line, size.label, f"makes {size.items:,} items ({size.detail})")

    # -- prompts

    def _prompts(self, key_node: Node, node: Node) -> None:
        if is_null(node):
            self._error(
                line(key_node), "prompts", "the list is empty; a job needs at least one prompt"
            )
            return
        if not isinstance(node, SequenceNode):
            self._error(
                line(node),
                "prompts",
                "must be a list, one entry per line starting with '- '",
            )
            return
        if not node.value:
            self._error(
                line(key_node), "prompts", "the list is empty; a job needs at least one prompt"
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
                    line(entry),
                    label,
                    "must be a prompt (text) or a mapping with prompt:, file: or template:, "
                    "not a list",
                )
        if self.count == 0 and not self.problems.errors:
            self._error(line(key_node), "prompts", "no prompts at all: the prompts files hold none")

    def _bare_prompt(self, node: ScalarNode, label: str) -> None:
        prompt = self._prompt_text(node, label)
        if prompt is None:
            return
        entry_line = line(node)
        settings = self._bare_settings
        if settings is None:
            entry = Layer(self.display, entry_line, label, EMPTY, {})
            settings = self.rules.settings(self._merged, (entry, self._defaults), self.problems)
            self._bare_settings = settings
        self._add_inline(prompt, settings, entry_line)

    def _mapping_entry(self, node: MappingNode, label: str) -> None:
        pairs = self.reader.pairs(node, label)
        kinds = [key for key in ENTRY_KINDS if key in pairs]
        if len(kinds) > 1:
            both = " and ".join(f"{key}:" for key in kinds)
            self._error(line(node), label, f"has both {both}; use one per entry")
        elif kinds == ["prompt"]:
            self._prompt_entry(node, pairs, label)
        elif kinds == ["file"]:
            self._file_entry(node, pairs, label)
        elif kinds == ["template"]:
            self._template_entry(node, pairs, label)
        else:
            self._neither(node, pairs, label)

    def _neither(self, node: MappingNode, pairs: Pairs, label: str) -> None:
        allowed = (*PROMPT_KEYS, "file", "template", "vars", "zip", "matrix")
        unknown = [key for key in pairs if key not in allowed]
        if len(pairs) == 1 and unknown:
            # `- A cat: on a mat` is YAML for a mapping; the user meant one prompt.
            self._error(
                line(node),
                label,
                "is a mapping, not a prompt; if the prompt contains ': ', put it in quotes",
            )
            return
        for key in unknown:
            self.reader.unknown_key(key, pairs[key][0], label, (*PROMPT_KEYS, "file", "template"))
        if not unknown:
            self._error(
                line(node),
                label,
                "needs prompt: (the text), file: (a prompts file) or template: (with vars:)",
            )

    def _prompt_entry(self, node: MappingNode, pairs: Pairs, label: str) -> None:
        entry_line = line(node)
        prompt = self._prompt_text(pairs["prompt"][1], f"{label}.prompt")
        layer = read_layer(self.reader, self.rules, pairs, label, entry_line, PROMPT_KEYS)
        if not layer.values:
            settings = self._bare_settings
            if settings is None:
                settings = self.rules.settings(self._merged, (layer, self._defaults), self.problems)
                self._bare_settings = settings
        else:
            merged = {**self._merged, **layer.values}
            settings = self.rules.settings(merged, (layer, self._defaults), self.problems)
        if prompt is not None:
            self._add_inline(prompt, settings, entry_line)

    def _add_inline(self, prompt: str, settings: ItemSettings | None, entry_line: int) -> None:
        self.count += 1
        if settings is None:
            return  # the job fails; keep counting to say so once
        if self._inline is None:
            self._inline = []
            self.sources.append(InlineRun(self.display, self._inline))
        self._inline.append((prompt, settings, entry_line))

    def _prompt_text(self, node: Node, field: str) -> str | None:
        if is_null(node):
            self._error(line(node), field, "empty prompt")
            return None
        try:
            raw = text(node, "text (the prompt)")
        except Invalid as exc:
            self._error(line(node), field, str(exc))
            return None
        prompt = raw.strip()  # the same object when there is nothing to strip
        if not prompt:
            self._error(line(node), field, "empty prompt")
            return None
        return prompt

    def _file_entry(self, node: MappingNode, pairs: Pairs, label: str) -> None:
        entry_line = line(node)
        file_node = pairs["file"][1]
        field = f"{label}.file"
        layer = read_layer(self.reader, self.rules, pairs, label, entry_line, FILE_KEYS)
        layer.lines["file"] = line(file_node)
        try:
            name = text(file_node, "a file path").strip()
        except Invalid as exc:
            self._error(line(file_node), field, str(exc))
            return
        if not name:
            self._error(line(file_node), field, "empty file path")
            return
        target = self._folder / name
        display = str(Path(self.display).parent / name)
        problem = unreadable(target, display, "prompts file")
        if problem is not None:
            self._error(line(file_node), field, problem)
            return
        merged = {**self._merged, **layer.values}
        source = PromptsFile(target, display, merged, (layer, self._defaults), self.rules)
        found = sum(1 for _ in source.entries(self.problems))
        if found == 0 and source.digest is not None:
            self.problems.warn(self.display, line(file_node), field, f"{display} holds no prompts")
        self.count += found
        self._sizes.append(_Size(entry_line, label, found, f"the lines of {display}"))
        self.sources.append(source)
        self._inline = None  # later inline prompts start a new run after this file

    def _template_entry(self, node: MappingNode, pairs: Pairs, label: str) -> None:
        if self._templates is None:
            self._templates = TemplateReader(self.reader, self.rules, self._folder, self._top_vars)
        entry = self._templates.read(
            node, pairs, label, self._defaults, self._merged, self.max_items
        )
        self.count += entry.combinations
        self._sizes.append(_Size(line(node), label, entry.combinations, entry.axes))
        expansion = entry.expansion
        if expansion is None:
            return
        self.sources.append(expansion)
        self._inline = None
        summary = TemplateSummary(
            expansion.line,
            expansion.template.source,
            entry.combinations,
            expansion.sample(),
            entry.axes,
            expansion.var_names,
        )
        self.templates.append(summary)

    def _error(self, at: int | None, field: str | None, message: str) -> None:
        self.problems.error(self.display, at, field, message)
