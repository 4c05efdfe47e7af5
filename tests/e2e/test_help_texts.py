"""Help and messages read as cron and a newcomer read them: whole command
descriptions, one way of naming environment variables, per-command --budget
help, group flags after the command, numbers and tiers as everywhere else, the
ledger's absolute path."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from e2e_support import batcher_command, cli_env, prompts, write_job

from batcher.cli import COMMAND_MODULES, main
from batcher.jobfile.catalog import load_catalog
from batcher.jobfile.items import ItemSettings


def help_of(*args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_the_command_list_is_not_cut_short() -> None:
    text = help_of()
    assert "..." not in text.split("Commands:", 1)[1]
    assert (
        "resume Run again what is pending, failed-and-retryable or interrupted in a batch." in text
    )


def test_environment_variables_are_written_one_way_in_every_help() -> None:
    for command in COMMAND_MODULES:
        text = help_of(command)
        assert "[env var:" not in text and "[env:" not in text, command
        for name in re.findall(r"\[env ([A-Z_]+)", text):
            assert name.startswith(("MAGIC_HOUR_", "BATCHER_")), (command, name)


def test_worker_help_says_sqlite_works_too() -> None:
    text = help_of("worker")
    assert "SQLite" in text and "PostgreSQL" in text


@pytest.mark.parametrize("command", ["resume", "worker"])
def test_resume_and_worker_budget_help_does_not_talk_of_a_job_file(command: str) -> None:
    text = help_of(command)
    budget = text.split("--budget CREDITS", 1)[1][:120]
    assert "job file" not in budget and "the batch's current budget" in budget
    assert "the job file's budget" in help_of("run").split("--budget CREDITS", 1)[1][:120]


def test_run_help_lists_the_nightly_flags() -> None:
    text = help_of("run")
    for flag in ("--json", "--progress-interval", "--log-file", "--log-format", "--metrics-file",
                 "--notify"):  # fmt: skip
        assert flag in text


def test_debug_is_accepted_after_the_command(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'l.db'}"
    result = CliRunner().invoke(main, ["status", "--db", db, "--debug"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["status", "--db", db, "-q"])
    assert result.exit_code == 0, result.output


def test_tiers_are_named_in_tier_order() -> None:
    catalog = load_catalog()
    order = list(catalog.tiers)
    for name, info in catalog.models.items():
        if 1 < len(info.tiers) < len(order):
            settings = ItemSettings(
                model=name, resolution=None, aspect_ratio="1:1", tool="ai-image-generator",
                image_count=1,
            )  # fmt: skip
            missing = next(tier for tier in order if tier not in info.tiers)
            problem = catalog.tier_problem(settings, missing)
            assert problem is not None
            named = problem.split("needs tier ", 1)[1].split(" or ")
            assert named == [tier for tier in order if tier in info.tiers]
            return
    pytest.skip("no model in the catalog is limited to some tiers")


def test_the_ledger_is_named_by_its_absolute_path(tmp_path: Path) -> None:
    job = write_job(tmp_path, prompts(1), name="where")
    done = subprocess.run(
        batcher_command("run", str(job), "--sandbox", "--no-wait"),
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"batch 'where' in sqlite:///{tmp_path / 'batcher.db'}" in done.stderr
    # After --no-wait, the hint says resume fetches the images.
    assert "`batcher resume where --sandbox` follows their renders and fetches the images" in (
        done.stderr
    )


def test_plan_into_a_pipe_is_plain_and_whole() -> None:
    job = Path(__file__).parents[2] / "jobs" / "nightly-example.yaml"
    result = CliRunner().invoke(main, ["plan", str(job)], terminal_width=40)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert not any(char in text for char in "┃│┏━┌─…")
    assert "qwen-image-2.1" in text and "seedream-v4" in text
    [title] = [line for line in text.splitlines() if "— batch " in line]
    assert title.endswith(tuple("0123456789"))  # the batch name whole, on the title's line
