"""Template strings: `{var}` is a variable's value, `{{` and `}}` are literal braces.

Nothing else is special: no format specs, conversions, attributes or indexes,
so a value is always pasted as written. A checked template is therefore also
a valid `str.format` pattern with the same meaning, and rendering it is one
`format_map` call (C speed, which matters at 100,000 combinations).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from batcher.jobfile.problems import Invalid

__all__ = ["NAME_RULE", "VAR_NAME_RE", "TemplateText", "compile_template"]

VAR_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
NAME_RULE: Final = "letters, digits, _ and -, starting with a letter or _"
_BRACE_HINT: Final = "write {{ or }} for a literal brace"


@dataclass(frozen=True, slots=True)
class TemplateText:
    """A checked template: its text as written and the variables it uses."""

    source: str
    names: tuple[str, ...]  # each variable once, in order of first use

    def render(self, values: Mapping[str, str | int]) -> str:
        return self.source.format_map(values)


def compile_template(source: str) -> TemplateText:
    """Check a template and list its variables; Invalid says what is wrong and where."""
    names: dict[str, None] = {}
    index, length = 0, len(source)
    while index < length:
        brace = _next_brace(source, index)
        if brace < 0:
            break
        if source.startswith(("{{", "}}"), brace):
            index = brace + 2
            continue
        if source[brace] == "}":
            raise Invalid(f"single '}}' at character {brace + 1} ({_BRACE_HINT})")
        end = source.find("}", brace + 1)
        inner = source[brace + 1 : end] if end >= 0 else ""
        opening = inner.find("{")
        if end < 0 or opening >= 0:
            raise Invalid(f"unclosed '{{' at character {brace + 1} ({_BRACE_HINT})")
        if not inner.strip():
            raise Invalid(
                f"empty '{{}}' at character {brace + 1}: name a variable inside ({_BRACE_HINT})"
            )
        if not VAR_NAME_RE.match(inner):
            raise Invalid(
                f"{{{inner}}} at character {brace + 1} is not a variable: a name is "
                f"{NAME_RULE} ({_BRACE_HINT})"
            )
        names.setdefault(inner)
        index = end + 1
    return TemplateText(source, tuple(names))


def _next_brace(source: str, start: int) -> int:
    opening, closing = source.find("{", start), source.find("}", start)
    if opening < 0:
        return closing
    if closing < 0:
        return opening
    return min(opening, closing)
