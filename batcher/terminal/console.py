"""The one module that owns the terminal.

Results go to stdout, diagnostics (warnings, errors, progress) to stderr, so
`batcher status --json > file` stays clean. The library logs through module
loggers; only the CLI calls `configure_logging`.
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from batcher.scrubber import ScrubbingFilter, scrub
from batcher.terminal.safe_text import printable

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def error(message: str) -> None:
    # Messages quote user text (prompts, paths): never markup, never :emoji: codes.
    stderr.print(
        f"[bold red]error:[/] {escape(_safe(message))}", markup=True, highlight=False, emoji=False
    )


def warning(message: str) -> None:
    stderr.print(
        f"[yellow]warning:[/] {escape(_safe(message))}",
        markup=True,
        highlight=False,
        emoji=False,
    )


def note(message: str) -> None:
    stderr.print(_safe(message), markup=False, highlight=False, emoji=False)


def traceback() -> None:
    """The exception being handled, with its traceback (only under --debug)."""
    stderr.print_exception(show_locals=False)


def result(text: str) -> None:
    """A line of the command's result on stdout, printed as is."""
    stdout.print(_safe(text), markup=False, highlight=False, emoji=False)


def _safe(text: str) -> str:
    # Messages quote text from outside: no escape sequence reaches the terminal,
    # and no piece of the API key (batcher.scrubber, a backstop).
    return scrub(printable(text))


def configure_logging(*, debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler: logging.Handler
    if stderr.is_terminal:
        handler = RichHandler(console=stderr, show_path=debug, rich_tracebacks=debug)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ScrubbingFilter())  # log lines quote API messages: no key in them
    root = logging.getLogger("batcher")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # --quiet drops the progress bar, not the news: a run still reports its
    # progress as a plain line every few seconds.
    logging.getLogger("batcher.terminal.progress").setLevel(
        logging.DEBUG if debug else logging.INFO
    )
