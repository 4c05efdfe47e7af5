"""Several worker processes share one batch through one ledger.

On the real PostgreSQL server (claims with FOR UPDATE SKIP LOCKED) and on one
SQLite file (claims serialised by its write lock): every prompt created
exactly once, a killed worker's items picked up by the others, its
half-sent items left in doubt, credits equal to the server's, and a budget
that holds across all workers.
"""

from __future__ import annotations

import math
import signal
import subprocess
import time
from collections.abc import Callable
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

pytestmark = pytest.mark.slow

DEADLINE_S = 90.0


def _wait_for(condition: Callable[[], bool], deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def _batch_exists(db: str, name: str) -> bool:
    with Ledger.open(db) as ledger:
        return ledger.get_batch(name) is not None


def _has_joined(db: str, pid: int) -> bool:
    with Ledger.open(db) as ledger:
        return any(w.pid == pid for w in ledger.workers())


def _start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    # In the test's folder: the default output folder (out/<batch>, where the
    # manifest goes even with --no-download) must not land in the checkout.
    return subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=DEADLINE_S)
    return process.returncode, stderr


def _check(db: str, journal: list[dict[str, Any]]) -> dict[str, int]:
    states = check_against_journal(db, journal)
    assert not any(states[state] for state in ("sending", "pending", "submitted"))
    with Ledger.open(db) as ledger:
        workers = ledger.workers()
    assert len(workers) >= 3
    assert all(w.stopped_at is not None for w in workers), "every worker was accounted for"
    return states


def _run_three_workers(
    tmp_path: Path,
    sandbox: ExternalSandbox,
    db: str,
    *,
    count: int,
    kill: bool,
    concurrency: int = 8,
    **job: Any,
) -> tuple[list[tuple[int, str]], dict[str, str]]:
    path = write_job(tmp_path, prompts(count), name="shared", **job)
    env = cli_env(MAGIC_HOUR_API_KEY="sandbox-key", BATCHER_RETRY_INSTANT="1")
    common = ["--base-url", sandbox.base_url, "--db", db, "--no-download"]
    common += ["--concurrency", str(concurrency)]
    first = _start(batcher_command("-q", "run", str(path), *common), env, tmp_path)
    _wait_for(lambda: _batch_exists(db, "shared") or first.poll() is not None)
    others = [
        _start(batcher_command("-q", "worker", "shared", *common), env, tmp_path) for _ in range(2)
    ]
    victim = others[0]
    if kill:
        # Kill it mid-run: once it has joined and creates are flowing.
        _wait_for(lambda: _has_joined(db, victim.pid) or victim.poll() is not None)
        target = len(sandbox.journal()) + 10
        _wait_for(lambda: len(sandbox.journal()) >= target or victim.poll() is not None)
        victim.send_signal(signal.SIGKILL)
    results = [_finish(p) for p in (first, *others)]
    return results, env


@pytest.mark.postgres
def test_three_workers_on_postgres_one_killed(
    tmp_path: Path, external_sandbox: Any, postgres_database: str
) -> None:
    sandbox = external_sandbox(
        "--render-seconds", "0.2", "--latency", "0.05", "--error-rate", "0.05",
        "--drop-rate", "0.02",
        "--render-error-rate", "0.05", "--seed", "9",
    )  # fmt: skip
    results, _ = _run_three_workers(
        tmp_path, sandbox, postgres_database, count=300, kill=True, concurrency=3
    )
    survivors = [results[0], results[2]]
    assert all(code in (0, 1) for code, _ in survivors), survivors
    assert results[1][0] == -signal.SIGKILL
    states = _check(postgres_database, sandbox.journal())
    assert states["complete"] + states["failed"] + states["unconfirmed"] == 300
    dropped = sum(1 for e in sandbox.journal() if e["dropped"])
    # Drops, and what the victim had begun to send: at most one item per sender task.
    assert states["unconfirmed"] <= dropped + math.ceil(3 * SENDERS_PER_SLOT)


@pytest.mark.postgres
def test_budget_holds_across_workers_on_postgres(
    tmp_path: Path, external_sandbox: Any, postgres_database: str
) -> None:
    sandbox = external_sandbox("--render-seconds", "0.05", "--charge-factor", "1.6")
    results, _ = _run_three_workers(
        tmp_path, sandbox, postgres_database, count=120, kill=False, budget=300
    )
    assert all(code == 1 for code, _ in results), results
    net = sum(e["credits_charged"] - e["credits_refunded"] for e in sandbox.journal())
    # Estimates are 5, charges 8: each worker learns the real price from its
    # first create, so at most a few first creates overshoot.
    assert net <= 300 + 3 * 3
    with Ledger.open(postgres_database) as ledger:
        [summary] = ledger.batch_summaries()
    assert summary.credits_net == net


def test_budget_holds_across_two_processes_on_one_sqlite_file(
    tmp_path: Path, external_sandbox: Any
) -> None:
    sandbox = external_sandbox("--render-seconds", "0.05")
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    path = write_job(tmp_path, prompts(80, resolution="640px"), name="shared", budget=203)
    env = cli_env(MAGIC_HOUR_API_KEY="sandbox-key", BATCHER_RETRY_INSTANT="1")
    common = ["--base-url", sandbox.base_url, "--db", db, "--no-download", "--concurrency", "16"]
    first = _start(batcher_command("-q", "run", str(path), *common), env, tmp_path)
    _wait_for(lambda: _batch_exists(db, "shared") or first.poll() is not None)
    second = _start(batcher_command("-q", "worker", "shared", *common), env, tmp_path)
    results = [_finish(first), _finish(second)]
    assert all(code == 1 for code, _ in results), results
    # Exact estimates (640px is z-image-turbo's lowest): the cap is exact too.
    net = sum(e["credits_charged"] for e in sandbox.journal())
    assert net == 200
    assert len({e["name"] for e in sandbox.journal()}) == 40
