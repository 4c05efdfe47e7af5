"""Cron overlap on PostgreSQL: two runs of one job at once, and two runners with
heartbeats far more frequent than the default, must never deadlock (issue 11,
point 7). Every transaction takes row locks in one order (batcher.ledger.tables:
workers rows, then items by id, then the batch row); a deadlock would show as
a `ledger.conflict` event (a retried transaction), which must not happen.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from e2e_support import batcher_command, check_against_journal, cli_env, prompts, write_job

from batcher.client.magic_hour import MagicHourClient
from batcher.jobfile.catalog import load_catalog
from batcher.ledger import Ledger
from batcher.run import prepare
from batcher.run.batch_run import BatchRun, RunOptions, RunResult
from batcher.settings import ApiConfig

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_two_cron_runs_of_one_job_at_once_never_deadlock(
    tmp_path: Path, external_sandbox: Any, postgres_database: str
) -> None:
    sandbox = external_sandbox("--render-seconds", "0.3", "--latency", "0.02")
    job = write_job(tmp_path, prompts(240), name="cron")
    env = cli_env(MAGIC_HOUR_API_KEY="sandbox-key", BATCHER_RETRY_INSTANT="1")
    args = ["--base-url", sandbox.base_url, "--db", postgres_database, "--no-download"]
    runs = [
        subprocess.Popen(
            batcher_command("run", str(job), *args, "--concurrency", "16"),
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(run.communicate(timeout=120)[1], run.returncode) for run in runs]
    for stderr, code in results:
        assert code == 0, stderr
        assert "Traceback" not in stderr, stderr
        assert "deadlock" not in stderr and "running it again" not in stderr, stderr
    journal = sandbox.journal()
    states = check_against_journal(postgres_database, journal)
    assert states["complete"] == 240 and len(journal) == 240, states


def test_runners_with_rapid_heartbeats_never_deadlock(
    tmp_path: Path, make_sandbox: Any, postgres_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two workers in one process, each beating every 10 ms (the default is 10 s)
    while its group commits update the same item rows."""
    sandbox = make_sandbox(render_seconds=0.1, latency=0.005)
    job = write_job(tmp_path, prompts(300), name="beats")
    catalog = load_catalog()
    with Ledger.open(postgres_database) as ledger:
        [spec] = prepare.load_jobs([job], catalog)
        batch = prepare.prepare_batch(
            ledger, spec, catalog, budget=None, retry_failed=False, resend_unconfirmed=False
        ).batch
    api = ApiConfig(sandbox.base_url, sandbox.key)
    results: list[RunResult] = []
    errors: list[BaseException] = []

    def worker() -> None:
        async def go() -> RunResult:
            with Ledger.open(postgres_database) as own:
                async with MagicHourClient(api, concurrency=16) as client:
                    options = RunOptions(concurrency=16, download=False, heartbeat_s=0.01)
                    return await BatchRun(own, client, batch, options).run()

        try:
            results.append(anyio.run(go))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with caplog.at_level(logging.WARNING, logger="batcher"):
        threads = [threading.Thread(target=worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not errors, errors
    conflicts = [r for r in caplog.records if getattr(r, "event", None) == "ledger.conflict"]
    assert conflicts == [], [r.getMessage() for r in conflicts]
    assert sum(r.counters.sent for r in results) == 300
    journal = [entry.as_dict() for entry in sandbox.journal()]
    states = check_against_journal(postgres_database, journal)
    assert states["complete"] == 300 and len(journal) == 300, states
