"""The batch name: `{date}` and `{job}` filled in, then checked to name a folder.

One job file run every night makes one batch per night (`products-{date}`),
while a re-run on the same day resumes it.
"""

from __future__ import annotations

import datetime
import string
from pathlib import Path
from typing import Final

from batcher.jobfile.problems import Invalid, Problems, suggest

__all__ = ["MAX_NAME_LENGTH", "PLACEHOLDERS", "resolve_name"]

PLACEHOLDERS: Final = ("date", "job")
MAX_NAME_LENGTH: Final = 200  # the batch name names the output folder


def resolve_name(
    template: str,
    job_path: Path,
    today: datetime.date | None,
    problems: Problems,
    display: str,
    line: int | None,
    field: str,
) -> str:
    """The batch name, or "" with the problem reported at `line` and `field`."""
    try:
        name = _expand(template, job_path.stem, today or datetime.date.today())
        _check_name(name)
    except Invalid as exc:
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
        raise Invalid(f"{exc}; placeholders are {known} (write {{{{ or }}}} for a brace)") from None
    for literal, placeholder, spec, conversion in parsed:
        parts.append(literal)
        if placeholder is None:
            continue
        if placeholder not in values or spec or conversion:
            written = "{" + placeholder + (f"!{conversion}" if conversion else "")
            written += (f":{spec}" if spec else "") + "}"
            message = f"unknown placeholder {written}"
            suggestion = suggest(placeholder, PLACEHOLDERS)
            if suggestion is not None and not (spec or conversion):
                message += f"; did you mean {{{suggestion}}}?"
            raise Invalid(f"{message} (known: {known})")
        parts.append(values[placeholder])
    return "".join(parts)


def _check_name(name: str) -> None:
    if not name.strip():
        raise Invalid("must not be empty")
    if name != name.strip():
        raise Invalid(f"must not start or end with spaces: {name!r}")
    if name in (".", "..") or any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in name):
        raise Invalid(
            f"{name!r} cannot name a batch: it names the output folder, so no / \\ "
            "or control characters"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise Invalid(f"is {len(name)} characters long; at most {MAX_NAME_LENGTH}")
