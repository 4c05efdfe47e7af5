"""A slow API and a stalled run, through the real CLI against the sandbox, with
the times scaled down by flags:

- every answer comes after 1 s while a poll first waits only 0.3 s
  (`--poll-timeout 0.3`): the poll timeout follows the latency it sees (it
  doubles after each timeout, then sits at a multiple of the answers' high
  quantile), so the run finishes instead of polling forever;
- renders that never end (`stuck_rate`): after `--stall-timeout` seconds
  without an item moving forward, the run says so at WARNING and exits 1,
  every render left `submitted` with its project id for `resume`.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_support import batcher_command, check_against_journal, cli_env, prompts, write_job

from batcher.ledger import Ledger
from batcher.sandbox import SandboxHandle

MakeSandbox = Callable[..., SandboxHandle]


def _run(tmp_path: Path, sandbox: SandboxHandle, items: int, *flags: str) -> tuple[int, str]:
    job = write_job(tmp_path, prompts(items), name="slow")
    done = subprocess.run(
        batcher_command(
            "run", str(job), "--base-url", sandbox.base_url,
            "--db", f"sqlite:///{tmp_path / 'ledger.db'}", "--out", str(tmp_path / "out"),
            "--concurrency", "4", "--no-preflight", *flags,
        ),
        env=cli_env(MAGIC_HOUR_API_KEY=sandbox.key, BATCHER_RETRY_INSTANT="1"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )  # fmt: skip
    assert "Traceback" not in done.stderr and "ExceptionGroup" not in done.stderr, done.stderr
    return done.returncode, done.stderr


@pytest.mark.slow
def test_polls_slower_than_their_timeout_adapt_and_the_run_finishes(
    tmp_path: Path, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox(latency=1.0, render_seconds=0.1)
    code, err = _run(tmp_path, sandbox, 6, "--poll-timeout", "0.3")
    assert code == 0, err
    states = check_against_journal(
        f"sqlite:///{tmp_path / 'ledger.db'}", [e.as_dict() for e in sandbox.journal()]
    )
    assert states["complete"] == 6
    assert len(sandbox.journal()) == 6
    # Honest by construction: with a fixed 0.3 s timeout no poll could ever
    # be answered (every answer takes 1 s), and the run would never end.


@pytest.mark.slow
def test_a_run_without_progress_stops_at_the_stall_timeout(
    tmp_path: Path, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox(stuck_rate=1.0)
    started = time.monotonic()
    code, err = _run(tmp_path, sandbox, 5, "--stall-timeout", "2")
    elapsed = time.monotonic() - started
    assert code == 1, err
    assert elapsed < 30, elapsed
    [warning] = [line for line in err.splitlines() if "WARNING" in line and "run stalled" in line]
    assert "no progress for" in warning and "--stall-timeout 2" in warning, warning
    [stop] = [line for line in err.splitlines() if "sending stopped:" in line]
    assert "no progress for" in stop, stop
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        items = list(ledger.items(1))
    assert {item.state for item in items} == {"submitted"}
    assert all(item.project_id for item in items)
    assert len(sandbox.journal()) == 5
