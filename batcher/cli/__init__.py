"""Command line: a thin layer that parses flags, calls the library and maps its
errors to messages and exit codes. Every command lives in a module of its own.
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
from typing import Any

import click

from batcher import __version__
from batcher.errors import EXIT_FAILURE, EXIT_INTERRUPTED, BatcherError, JobFileError
from batcher.terminal import console as output

log = logging.getLogger(__name__)

# Click's own ways out (usage errors, ctx.exit, Ctrl-C at a prompt) and a closed
# pipe (`batcher status | head`) are Click's to handle, not internal errors.
_CLICK_EXITS = (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort)

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# Command name -> the module that defines it. Modules load only when their
# command runs (or `--help` lists them), so `batcher validate` does not pay
# for SQLAlchemy, httpx and uvicorn at start-up.
COMMAND_MODULES: dict[str, str] = {
    "run": "runs",
    "resume": "runs",
    "status": "ledger",
    "items": "ledger",
    "audit": "credits",
    "validate": "jobs",
    "plan": "jobs",
    "sandbox": "sandbox",
    "db": "ledger",
    "account": "credits",
    "reconcile": "credits",
    "recover": "recover",
    "worker": "runs",
    "gallery": "review",
    "review": "review",
    "rerun": "rerun",
}


class BatcherGroup(click.Group):
    """Loads commands lazily, and maps library errors to a message on stderr and
    the documented exit code."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # -q and --debug belong to the group, but `batcher run job.yaml -q` is how
        # people type them: moved before the command (never past a `--`).
        return super().parse_args(ctx, hoist_global_flags(args))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Click cuts each description to one line with "..."; the whole first
        # sentence, wrapped, says what the command is for.
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        added = super().get_command(ctx, cmd_name)
        if added is not None:
            return added
        module_name = COMMAND_MODULES.get(cmd_name)
        if module_name is None:
            return None
        module = importlib.import_module(f"batcher.cli.{module_name}")
        for command in module.COMMANDS:
            if command.name == cmd_name:
                return command  # type: ignore[no-any-return]
        raise LookupError(f"batcher.cli.{module_name} does not define {cmd_name!r}")

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatcherError as exc:
            if _debug(ctx):
                output.traceback()
            if isinstance(exc, JobFileError):
                # One line per problem, FILE:LINE: field: message, like `validate`.
                from batcher.terminal.job_views import print_job_file_error

                print_job_file_error(exc)
            else:
                output.error(str(exc))
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            output.error("interrupted")
            sys.exit(EXIT_INTERRUPTED)
        except (*_CLICK_EXITS, BrokenPipeError):
            raise
        except Exception as exc:
            # A bug, not bad input: one line, the traceback only when asked for.
            debug = _debug(ctx)
            if debug:
                output.traceback()
            output.error(
                f"internal error: {type(exc).__name__}: {exc}"
                + ("" if debug else " (run again with --debug for the traceback)")
            )
            sys.exit(EXIT_FAILURE)


GLOBAL_FLAGS = frozenset({"-q", "--quiet", "--debug"})


def hoist_global_flags(args: list[str]) -> list[str]:
    """`run job.yaml -q --debug` as `-q --debug run job.yaml`: the group's flags are
    taken from anywhere before a `--`."""
    end = args.index("--") if "--" in args else len(args)
    hoisted = [arg for arg in args[:end] if arg in GLOBAL_FLAGS]
    if not hoisted:
        return args
    rest = [arg for arg in args[:end] if arg not in GLOBAL_FLAGS]
    return [*hoisted, *rest, *args[end:]]


def _debug(ctx: click.Context) -> bool:
    # Set by the group's callback, which runs inside super().invoke().
    return bool(ctx.meta.get("batcher.debug"))


@click.group(cls=BatcherGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="batcher")
@click.option("--debug", is_flag=True, help="Log everything and show tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings, errors and results.")
@click.pass_context
def main(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Run bulk image generations against Magic Hour's AI Image Generator API.

    Every item is written to a ledger before it is sent, so an interrupted or
    failed batch resumes where it stopped and nothing is paid for twice.

    \b
    Environment:
      MAGIC_HOUR_API_KEY    the API key (never a flag, never logged)
      MAGIC_HOUR_BASE_URL   API base URL (default https://api.magichour.ai)
      BATCHER_DATABASE_URL  ledger URL (default sqlite:///batcher.db)
      BATCHER_CATALOG       model catalog file (default: the packaged one)

    \b
    Exit codes: 0 all complete, 1 some items failed or in doubt or the run
    was stopped, 2 bad input or configuration, 130 interrupted (SIGINT),
    143 terminated (SIGTERM, or SIGHUP: a closed terminal).
    """
    ctx.meta["batcher.debug"] = debug
    ctx.meta["batcher.quiet"] = quiet
    output.configure_logging(debug=debug, quiet=quiet)


__all__ = ["main"]


def entry_point() -> None:
    """`batcher` as a program (the console script and `python -m batcher`)."""
    try:
        main()
    finally:
        # The process ends here: freezing what it built skips the final
        # collection's walk over every object (0.1-0.2 s, measured), and the
        # system frees the memory at once. Not in `main`, which tests call.
        gc.freeze()
