"""`batcher rerun BATCH --rejected`: send the rejected images' prompts again."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import click

from batcher import library
from batcher.cli.options import run_options

# The same observer and flag mapping as run/resume/worker.
from batcher.cli.runs import _prepare as prepare_run
from batcher.cli.runs import _send_settings as send_settings
from batcher.run.rerun import RerunPlan
from batcher.terminal import rerun_views


@click.command()
@click.argument("batch_name", metavar="BATCH")
@click.option(
    "--rejected",
    is_flag=True,
    help="Rerun the prompts of the images rejected in `batcher review` (required).",
)
@click.option("--model", metavar="MODEL", help="Use this model instead of each item's.")
@click.option("--resolution", metavar="RES", help="Use this resolution instead of each item's.")
@click.option(
    "--again",
    is_flag=True,
    help="Also rerun items that were rerun before (by default each is rerun once).",
)
@click.option("--dry-run", is_flag=True, help="Show the plan and its cost; write and send nothing.")
@click.option("-y", "--yes", is_flag=True, help="Send without asking for confirmation.")
@click.option(
    "--sandbox", is_flag=True, help="The batch was run with --sandbox: use a local emulator again."
)
@run_options
@click.pass_context
def rerun(
    ctx: click.Context,
    /,
    batch_name: str,
    rejected: bool,
    model: str | None,
    resolution: str | None,
    again: bool,
    dry_run: bool,
    yes: bool,
    sandbox: bool,
    **flags: Any,
) -> None:
    """Make a new item for each item of BATCH with a rejected image, with the same
    prompt and settings unless --model or --resolution change them, and run them.

    The plan (items and estimated credits) is shown first; --dry-run stops
    there. Otherwise batcher asks before sending (on a terminal; --yes answers
    yes; without a terminal and without --yes it stops after the plan). The new
    items run like `run`'s: preflight, --budget (here: the most this rerun may
    spend), progress, the gallery refreshed, where each new image shows beside
    the one it redoes. An item is rerun once unless --again.
    """
    if not rejected:
        raise click.UsageError("say which images to rerun: --rejected", ctx)
    shown: list[RerunPlan] = []
    command = continue_command(ctx)

    def confirm(plan: RerunPlan) -> bool:
        shown.append(plan)
        rerun_views.print_plan(plan)
        if yes:
            return True
        if sys.stdin.isatty() and sys.stderr.isatty():
            return rerun_views.ask(plan)
        rerun_views.not_confirmed(command)
        return False

    observer = prepare_run(ctx)
    result = library.rerun(
        batch_name,
        model=model,
        resolution=resolution,
        again=again,
        dry_run=dry_run,
        confirm=confirm,
        sandbox=sandbox,
        observer=observer,
        **send_settings(flags),
    )
    if not shown:
        rerun_views.print_plan(result.plan)
    if result.dry_run:
        rerun_views.dry_run_note()
    elif result.declined and (yes or sys.stdin.isatty()):
        rerun_views.declined()
    sys.exit(result.exit_code)


# The shared --budget caps a batch; a rerun's caps the rerun.
for _param in rerun.params:
    if _param.name == "budget" and isinstance(_param, click.Option):
        _param.help = (
            "The most credits this rerun may spend, on top of what the batch spent "
            "[default: the batch's budget, if any]."
        )


def continue_command(ctx: click.Context) -> str:
    """This command as typed (every option away from its default), with --yes: what
    a run without a terminal prints so that the plan can be sent."""
    parts = ["batcher", ctx.info_name or "rerun", str(ctx.params["batch_name"])]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in ("yes", "dry_run"):
            continue
        value = ctx.params.get(param.name or "")
        if value is None or value == param.default or value is False:
            continue
        name = max(param.opts, key=len)
        parts.extend([name] if param.is_flag else [name, str(value)])
    parts.append("--yes")
    return shlex.join(parts)


COMMANDS: list[click.Command] = [rerun]
