"""The one module that owns the terminal.

Results go to stdout, diagnostics (warnings, errors, progress) to stderr, so
`batcher status --json > file` stays clean. The library logs through module
loggers; only the CLI calls `configure_logging`.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.text import Text

from batcher.errors import ConfigError
from batcher.scrubber import ScrubbingFilter, scrub
from batcher.terminal.log_format import CompactFormatter, JsonFormatter, TextFormatter
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
    """Log records on stderr: compact beside Rich's time and level on a terminal,
    ISO 8601 time, level, logger and every context field elsewhere (cron)."""
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler: logging.Handler
    if stderr.is_terminal:
        handler = RichHandler(
            console=stderr,
            show_path=debug,
            rich_tracebacks=debug,
            omit_repeated_times=False,
            log_time_format=_iso_seconds,
        )
        handler.setFormatter(CompactFormatter())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(TextFormatter())
    handler.addFilter(ScrubbingFilter())  # log lines quote API messages: no key in them
    root = logging.getLogger("batcher")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # -q means only warnings, errors and results: no progress lines either
    # (a --log-file still gets them).
    logging.getLogger("batcher.terminal.progress").setLevel(logging.NOTSET)


def add_log_file(path: Path, *, json_lines: bool) -> None:
    """Also append every record (at the level stderr shows, INFO at least) to `path`,
    whole: text lines, or JSON lines with `json_lines`."""
    try:
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--log-file {path}: cannot write it ({exc.strerror or exc})") from None
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.addFilter(ScrubbingFilter())  # the file keeps logs for good: no key in them
    root = logging.getLogger("batcher")
    root.addHandler(handler)
    if root.level > logging.INFO:
        # -q quiets the terminal, not the file: stderr's handler keeps WARNING.
        for other in root.handlers:
            if other is not handler and other.level == logging.NOTSET:
                other.setLevel(root.level)
        root.setLevel(logging.INFO)


def _iso_seconds(moment: datetime) -> Text:
    return Text(moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"))
