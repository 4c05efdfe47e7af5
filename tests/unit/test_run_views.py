"""What the terminal shows of a run and of a table, and the exit code a run ends with."""

from __future__ import annotations

import io
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console
from rich.table import Table

from batcher.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED
from batcher.ledger import STATES
from batcher.run.batch_run import (
    STOP_BUDGET,
    STOP_INTERRUPTED,
    STOP_UNREACHABLE,
    RunCounters,
    RunResult,
)
from batcher.run.summary import RunStats, RunSummary, exit_code, worst_exit_code
from batcher.terminal.progress import RunDisplay
from batcher.terminal.run_views import next_steps
from batcher.terminal.tables import print_table

NOW = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)


def states(**counts: int) -> dict[str, int]:
    return {state: counts.get(state, 0) for state in STATES}


def result(*, stopped: str | None = None, waited: bool = True, **counts: int) -> RunResult:
    return RunResult(
        batch="nightly",
        states=states(**counts),
        counters=RunCounters(),
        stopped=stopped,
        stop_detail="the budget is spent" if stopped else None,
        out_dir=None,
        unsent=counts.get("pending", 0) if stopped else 0,
        waited=waited,
    )


def summary(run: RunResult, *, db: str = "sqlite:///batcher.db", **fields: Any) -> RunSummary:
    return RunSummary(
        batch=run.batch,
        exit_code=fields.pop("exit_code", exit_code(run)),
        items=sum(run.states.values()),
        states=run.states,
        credits_charged=0,
        credits_refunded=0,
        credits_net=0,
        started_at=NOW,
        finished_at=NOW,
        duration_s=0.0,
        out=Path("out/nightly"),
        manifest=Path("out/nightly/manifest.jsonl"),
        gallery=None,
        stopped=run.stopped,
        stop_detail=run.stop_detail,
        unsent=run.unsent,
        waited=run.waited,
        downloaded=True,
        counters=RunStats.of(run.counters),
        db=db,
        **fields,
    )


# --------------------------------------------------------------------------- exit codes


def test_exit_codes_of_a_run() -> None:
    assert exit_code(result(complete=3)) == EXIT_OK
    assert exit_code(result(submitted=3, waited=False)) == EXIT_OK
    assert exit_code(result(submitted=3)) == EXIT_FAILURE  # renders left unfollowed
    assert exit_code(result(complete=2, failed=1)) == EXIT_FAILURE
    assert exit_code(result(complete=2, unconfirmed=1)) == EXIT_FAILURE
    assert exit_code(result(stopped=STOP_BUDGET, complete=2, pending=1)) == EXIT_FAILURE
    assert exit_code(result(stopped=STOP_UNREACHABLE, pending=3)) == EXIT_FAILURE
    interrupted = result(stopped=STOP_INTERRUPTED, complete=1, pending=2)
    assert exit_code(interrupted) == EXIT_INTERRUPTED == 130
    assert exit_code(interrupted, interrupted_code=EXIT_TERMINATED) == 143
    codes = [summary(result(complete=1)), summary(result(failed=1))]
    assert worst_exit_code(codes) == EXIT_FAILURE
    assert worst_exit_code([]) == EXIT_OK


# --------------------------------------------------------------------------- next steps


def test_a_clean_run_needs_no_next_step() -> None:
    assert next_steps(summary(result(complete=3))) == []


def test_after_a_budget_stop_resume_needs_a_new_budget() -> None:
    [hint] = next_steps(summary(result(stopped=STOP_BUDGET, complete=2, pending=5)))
    assert "5 item(s) left unsent" in hint
    assert "Continue with: batcher resume nightly --budget N" in hint


def test_failures_point_at_items_and_doubts_at_items_and_reconcile() -> None:
    hints = next_steps(summary(result(complete=1, failed=2, unconfirmed=1)))
    assert len(hints) == 2
    assert "`batcher items nightly --state unconfirmed` lists them" in hints[0]
    assert "`batcher reconcile nightly` asks the API about them" in hints[0]
    assert "`batcher resume nightly --resend-unconfirmed` sends them again" in hints[0]
    assert "`batcher items nightly --state failed` shows why" in hints[1]


def test_hints_after_a_sandbox_run_name_sandbox_and_skip_reconcile() -> None:
    hints = next_steps(summary(result(failed=1, unconfirmed=1)), sandbox=True)
    assert "reconcile" not in hints[0]
    assert "`batcher resume nightly --sandbox --resend-unconfirmed`" in hints[0]
    assert "`batcher resume nightly --sandbox` retries" in hints[1]


def test_after_no_wait_resume_fetches_the_images() -> None:
    [hint] = next_steps(summary(result(waited=False, submitted=3)))
    assert hint == (
        "3 item(s) submitted without waiting (--no-wait): "
        "`batcher resume nightly` follows their renders and fetches the images"
    )


def test_hints_name_a_ledger_that_is_not_the_default() -> None:
    run = result(stopped=STOP_INTERRUPTED, pending=2)
    [hint] = next_steps(summary(run, db="sqlite:////srv/batcher.db"))
    assert hint == (
        "interrupted; the ledger is consistent. "
        "Continue with: batcher resume nightly --db sqlite:////srv/batcher.db"
    )


# --------------------------------------------------------------------------- tables


def wide_table() -> Table:
    table = Table(title="items")
    table.add_column("key")
    table.add_column("prompt", overflow="ellipsis", no_wrap=True, max_width=12)
    table.add_row("k1", "a prompt far longer than any terminal column would hold " * 3)
    return table


def test_a_table_into_a_pipe_is_plain_and_whole() -> None:
    buffer = io.StringIO()
    print_table(wide_table(), console=Console(file=buffer, width=40))
    text = buffer.getvalue()
    lines = text.splitlines()
    assert lines[0] == "items"
    assert lines[1].split() == ["key", "prompt"]
    assert lines[2].split(maxsplit=1) == [
        "k1",
        ("a prompt far longer than any terminal column would hold " * 3).strip(),
    ]
    assert ("a prompt far longer than any terminal column would hold " * 3).strip() in text
    assert "…" not in text and "\x1b" not in text
    assert not any(char in text for char in "┃│┏━┌─")
    assert all(line == line.rstrip() for line in lines)


def test_a_table_on_a_terminal_fits_it() -> None:
    buffer = io.StringIO()
    print_table(wide_table(), console=Console(file=buffer, width=40, force_terminal=True))
    text = buffer.getvalue()
    assert "…" in text  # cut to fit, as asked on a terminal
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert max(len(line) for line in plain.splitlines()) <= 40
    assert "━" in plain or "─" in plain  # a real table


# --------------------------------------------------------------------------- progress


def test_progress_off_a_terminal_is_a_plain_line_at_each_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters = RunCounters(sent=3, created=3, complete=2, failed=1, images=2, credits_charged=15)
    display = RunDisplay("nightly", wait=True, live=False, plain_every_s=0.01)

    async def follow_briefly() -> None:
        with anyio.move_on_after(0.2):
            await display.follow(counters, 4)

    with caplog.at_level(logging.INFO, logger="batcher.terminal.progress"):
        anyio.run(follow_briefly)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) >= 3, "a line at every interval"
    assert all(
        line.startswith("nightly: 3/4 (75%) · 2 complete · 1 failed · 0 in doubt") for line in lines
    )
    assert all("items/s · ETA " in line for line in lines)
    assert all("15 credits" in line and "\x1b" not in line for line in lines)
