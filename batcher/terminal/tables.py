"""Printing tables: fitted to a terminal, plain and whole everywhere else.

On a terminal a table is a Rich table at the terminal's width. Into a file or a
pipe (cron, `| cat`, `| grep`) it is plain text: no borders, no colours, no
escape codes, and every column at its natural width, so no cell is ever cut
short with an ellipsis, however wide the lines get.
"""

from __future__ import annotations

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from batcher.terminal import console as output
from batcher.terminal.safe_text import printable

# Wide enough that no real table is squeezed when measured at it.
UNBOUNDED_WIDTH = 100_000


def print_table(table: Table, *, console: Console | None = None) -> None:
    """Print `table` on stdout (or `console`): Rich on a terminal, plain elsewhere."""
    target = console or output.stdout
    safe_cells(table)
    if target.is_terminal:
        target.print(table)
        return
    plain_table(table)
    # The title on its own line: Rich would fold one wider than the columns.
    title, table.title = table.title, None
    natural = Measurement.get(target, target.options.update_width(UNBOUNDED_WIDTH), table).maximum
    # Console.print clamps `width` to the console's own: a one-off console on the
    # same stream prints the table at its natural width instead.
    plain = Console(
        width=max(natural, 1),
        color_system=None,
        force_terminal=False,
        soft_wrap=False,
        highlight=False,
        emoji=False,
    )
    with plain.capture() as captured:
        plain.print(table)
    # Cells are padded to their column's width: no line needs the spaces at its end.
    lines = [line.rstrip() for line in captured.get().splitlines()]
    if title:
        lines.insert(0, title.plain if isinstance(title, Text) else str(title))
    target.file.write("".join(f"{line}\n" for line in lines))
    target.file.flush()


def plain_table(table: Table) -> Table:
    """Turn `table` (in place) into plain columns: no box, no edge, nothing cut or folded."""
    table.box = None
    table.title_justify = "left"
    table.caption_justify = "left"
    table.show_edge = False
    table.pad_edge = False
    table.show_lines = False
    table.collapse_padding = False
    for column in table.columns:
        column.no_wrap = True
        column.overflow = "ignore"
        column.max_width = None
    return table


def safe_cells(table: Table) -> Table:
    """Drop escape sequences and control characters from every cell (in place):
    cells quote prompts, names and API messages."""
    for column in table.columns:
        # Rich keeps a column's cells in `_cells`; rebuilding the table from
        # rows would lose the styles each view chose.
        column._cells = [_safe_cell(cell) for cell in column._cells]
    return table


def _safe_cell(cell: RenderableType) -> RenderableType:
    if isinstance(cell, Text):
        plain = cell.plain
        clean = printable(plain)
        return cell if clean == plain else Text(clean, style=cell.style)
    if isinstance(cell, str):
        return printable(cell)
    return cell
