"""Prompts files named by `file:` entries: a text file (one prompt per line, blank and
`#` lines skipped) or a CSV file whose header names the columns.

A prompts file is read line by line on the validation pass and again on every
`items()` pass, so a job of millions of lines holds none of them; the digest
taken on the first pass proves that later passes read the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from batcher.jobfile.file_reading import NotRegularFileError, file_size, open_regular, text_lines
from batcher.jobfile.items import NO_VARS, ItemSettings, ItemVars
from batcher.jobfile.problems import Invalid, Problems, field_name, not_one_of, suggest
from batcher.jobfile.settings_rules import BAD, Layer, Rules, Value
from batcher.jobfile.yaml_nodes import INT_RE, Scalar

__all__ = ["CSV_COLUMNS", "Entry", "PromptsFile", "unreadable"]

CSV_COLUMNS: Final = (
    "prompt",
    "model",
    "resolution",
    "aspect_ratio",
    "tool",
    "image_count",
    "name",
)

# What every source of prompts yields: (prompt, settings, line, vars). Settings
# are None where a problem was reported.
Entry = tuple[str, ItemSettings | None, int, ItemVars]


def unreadable(path: Path, display: str, what: str) -> str | None:
    """Why `path` cannot serve as a `what` ("prompts file"), or None when it can."""
    try:
        with open_regular(path):
            pass
    except FileNotFoundError:
        return f"no such file: {display} (a file: path is relative to the job file's folder)"
    except IsADirectoryError:
        return f"{display} is a folder, not a {what}"
    except NotRegularFileError as exc:
        return f"{display} is {exc.kind}, not a regular file: a {what} must be a regular file"
    except OSError as exc:
        return f"cannot read {display}: {exc.strerror or exc}"
    return None


class PromptsFile:
    """A `file:` entry's prompts, streamed from the file on every pass."""

    def __init__(
        self,
        path: Path,
        display: str,
        merged: dict[str, Value],
        chain: tuple[Layer, ...],
        rules: Rules,
    ) -> None:
        self.path = path
        self.display = display
        self.is_csv = path.suffix.lower() == ".csv"
        self.merged = merged  # settings of the `file:` entry over defaults and the catalog
        self.chain = chain  # (the file entry, defaults), for problem reports
        self.rules = rules
        entry = chain[0]
        self.entry_line = entry.lines.get("file", entry.line)
        # Problems inside the file name the entry that named it too.
        self.origin = f"{field_name(entry.label, 'file')} in {entry.path}:{self.entry_line}"
        self.digest: bytes | None = None  # set by the validation pass
        self.size = -1

    def entries(self, problems: Problems) -> Iterator[Entry]:
        """Every prompt of the file; settings are None where a problem was reported."""
        validating = self.digest is None
        if not validating and file_size(self.path) != self.size:
            problems.error(self.display, None, None, "has a different size now")
        hasher = hashlib.sha256()
        try:
            stream = open_regular(self.path)
        except OSError as exc:
            entry = self.chain[0]
            message = f"cannot read {self.display}: {exc.strerror or exc}"
            problems.error(entry.path, self.entry_line, field_name(entry.label, "file"), message)
            return
        with stream:
            lines = text_lines(
                stream, self.display, self.origin, problems, what="prompts text", hasher=hasher
            )
            yield from self._csv(lines, problems) if self.is_csv else self._text(lines, problems)
        if validating:
            self.digest = hasher.digest()
            self.size = file_size(self.path)
        elif hasher.digest() != self.digest:
            problems.error(self.display, None, None, "has different content now")

    def _text(self, lines: Iterator[tuple[int, str]], problems: Problems) -> Iterator[Entry]:
        settings = self.rules.settings(self.merged, self.chain, problems)
        for number, text in lines:
            prompt = text.strip()
            if prompt and prompt[0] != "#":
                yield prompt, settings, number, NO_VARS

    def _csv(self, lines: Iterator[tuple[int, str]], problems: Problems) -> Iterator[Entry]:
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
        self, row: list[str], header: list[str], line: int, problems: Problems
    ) -> Entry | None:
        display = self.display
        if len(row) > len(header) and any(cell.strip() for cell in row[len(header) :]):
            problems.error(
                display,
                line,
                None,
                f"the row has {len(row)} cells but the header names {len(header)} columns",
            )
            return None
        values: dict[str, Value] = {}
        prompt = ""
        for column, cell in zip(header, row, strict=False):
            text = cell.strip()
            if column == "prompt":
                # A quoted cell may span lines; Windows line ends inside it become plain ones.
                prompt = text.replace("\r\n", "\n") if "\r" in text else text
                continue
            if not text:  # an empty cell inherits
                continue
            value: Scalar = int(text) if column == "image_count" and INT_RE.match(text) else text
            try:
                checked, warning = self.rules.check(column, value, text)
            except Invalid as exc:
                problems.error(display, line, column, str(exc))
                values[column] = BAD
                continue
            if warning is not None:
                problems.warn(display, line, column, warning)
            values[column] = checked
        if not prompt:
            problems.error(display, line, "prompt", "empty prompt")
            return None
        if not values:
            return prompt, self.rules.settings(self.merged, self.chain, problems), line, NO_VARS
        row_layer = Layer(display, line, "", values, dict.fromkeys(values, line), kind="row")
        merged = {**self.merged, **values}
        settings = self.rules.settings(merged, (row_layer, *self.chain), problems)
        return prompt, settings, line, NO_VARS


def _csv_header(row: list[str], display: str, line: int, problems: Problems) -> list[str] | None:
    columns = [cell.strip() for cell in row]
    if not any(suggest(column, CSV_COLUMNS) for column in columns if column):
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
            message = not_one_of("column", column, CSV_COLUMNS)
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
