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
from e2e_support import ExternalSandbox, batcher_command, cli_env, prompts, write_job

from batcher.ledger.store import Ledger
from batcher.runner import SENDERS_PER_SLOT

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


def _check_against_journal(
    db: str, journal: list[dict[str, Any]], *, settled: bool = False
) -> dict[str, int]:
    with Ledger.open(db) as ledger:
        [summary] = ledger.batch_summaries()
        items = list(ledger.items(summary.id))
        charged = ledger.charged_projects(summary.id)
    by_id = {entry["id"]: entry for entry in journal}
    known = {project_id for _, project_id, _, _ in charged}
    # The ledger knows every project it was told about, at the server's price.
    for _, project_id, credits, refunded in charged:
        assert by_id[project_id]["credits_charged"] == credits
        # A refund the killed run had not seen yet is recorded by the next one.
        if settled:
            assert by_id[project_id]["credits_refunded"] == refunded
        else:
            assert refunded in (0, by_id[project_id]["credits_refunded"])
    # What the server created and the ledger never heard of belongs to an item in
    # doubt: `sending` right after a kill (the intent was written, the answer was
    # not), `unconfirmed` once a later run has settled that.
    in_doubt = {i.project_name for i in items if i.state in ("sending", "unconfirmed")}
    for entry in journal:
        if entry["id"] not in known:
            assert entry["name"] in in_doubt, f"{entry['id']} was created for nothing we know"
    # Exactly once: no item has two projects unless a render failed first.
    per_item: dict[str, list[dict[str, Any]]] = {}
    for entry in journal:
        per_item.setdefault(entry["name"], []).append(entry)
    for name, entries in per_item.items():
        live = [e for e in entries if e["status"] != "error"]
        assert len(live) <= 1, f"{name} was created {len(live)} times"
    if settled:
        assert not [i for i in items if i.state == "sending"], "a send left half-recorded"
    return summary.states


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
        _check_against_journal(db, sandbox.journal())
    assert kills >= KILLS // 2, "the runs finished before they could be killed"
    final = subprocess.run(
        resume, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert final.returncode in (0, 1), final.stderr
    states = _check_against_journal(db, sandbox.journal(), settled=True)
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
    states = _check_against_journal(db, sandbox.journal(), settled=True)
    assert states["complete"] == 40
    assert len(sandbox.journal()) == 40
