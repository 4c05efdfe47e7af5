"""Killing batcher at any instant loses nothing and pays nothing twice.

batcher runs as a real process against `batcher sandbox` in another process;
it is killed with SIGKILL at random moments (while creates are going out,
while renders are followed) and resumed, again and again. Then the sandbox's
journal, which saw every create, is held against the ledger.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    ExternalSandbox,
    batcher_command,
    check_against_journal,
    cli_env,
    prompts,
    write_job,
)

from batcher.ledger import Ledger
from batcher.run.batch_run import SENDERS_PER_SLOT

KILLS = 6
CONCURRENCY = 8
PROMPTS = 80
DEADLINE_S = 60.0

pytestmark = pytest.mark.slow


def _wait_for(condition: Any, deadline_s: float = DEADLINE_S) -> None:
    """Await a condition on another process, checking often (no fixed sleeps)."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def _commands(job: Path, sandbox: ExternalSandbox, db: str, out: Path) -> tuple[list[str], ...]:
    common = [
        "--base-url",
        sandbox.base_url,
        "--db",
        db,
        "--out",
        str(out),
        "--concurrency",
        str(CONCURRENCY),
    ]
    run = batcher_command("-q", "run", str(job), *common)
    resume = batcher_command("-q", "resume", "crash", *common)
    return run, resume


def test_sigkill_at_random_moments_then_resume(tmp_path: Path, external_sandbox: Any) -> None:
    sandbox = external_sandbox(
        "--render-seconds",
        "0.3",
        "--error-rate",
        "0.1",
        "--drop-rate",
        "0.02",
        "--render-error-rate",
        "0.1",
        "--seed",
        "42",
    )
    job = write_job(tmp_path, prompts(PROMPTS), name="crash")
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    run, resume = _commands(job, sandbox, db, tmp_path / "out")
    env = cli_env(MAGIC_HOUR_API_KEY="sandbox-key", BATCHER_RETRY_INSTANT="1")
    rng = random.Random(20261125)
    kills = 0
    for round_ in range(KILLS):
        process = subprocess.Popen(
            run if round_ == 0 else resume,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        before = len(sandbox.journal())
        wanted = before + rng.randint(1, 12)
        # Kill after some more creates went out, sometimes a little later still,
        # so kills land mid-create, mid-poll and mid-download.
        _wait_for(lambda p=process, n=wanted: len(sandbox.journal()) >= n or p.poll() is not None)
        if rng.random() < 0.5:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=rng.uniform(0.0, 0.4))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=30)
        check_against_journal(db, sandbox.journal(), settled=False)
    assert kills >= KILLS // 2, "the runs finished before they could be killed"
    final = subprocess.run(
        resume, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert final.returncode in (0, 1), final.stderr
    states = check_against_journal(db, sandbox.journal())
    assert states["pending"] == 0
    assert states["submitted"] == 0
    settled = states["complete"] + states["failed"] + states["unconfirmed"]
    assert settled == PROMPTS
    # Items are in doubt only because a connection dropped or a kill hit sends
    # begun (at most one per sender task).
    dropped = sum(1 for e in sandbox.journal() if e["dropped"])
    assert states["unconfirmed"] <= dropped + kills * math.ceil(CONCURRENCY * SENDERS_PER_SLOT)


def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path: Path, external_sandbox: Any) -> None:
    sandbox = external_sandbox("--render-seconds", "0.5", "--latency", "0.05")
    job = write_job(tmp_path, prompts(40), name="crash")
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    run, resume = _commands(job, sandbox, db, tmp_path / "out")
    env = cli_env(MAGIC_HOUR_API_KEY="sandbox-key", BATCHER_RETRY_INSTANT="1")
    process = subprocess.Popen(
        run, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for(lambda: len(sandbox.journal()) >= 5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "batcher resume crash" in stderr
    with Ledger.open(db) as ledger:
        states = ledger.state_counts(1)
    assert states["sending"] == 0
    assert states["unconfirmed"] == 0, "creates in flight were answered before stopping"
    assert states["pending"] > 0, "it stopped sending when asked"
    final = subprocess.run(
        resume, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert final.returncode == 0, final.stderr
    states = check_against_journal(db, sandbox.journal())
    assert states["complete"] == 40
    assert len(sandbox.journal()) == 40
