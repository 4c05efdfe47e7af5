"""A ledger lost under a run or between runs, through the real CLI (issue 11, point 2).

- Removed or emptied mid-run: the run notices (the file's identity), stops
  sending, saves what arrives after to the rescue file, and exits 1 in one line.
- Then `run` refuses (exit 2, nothing sent) to start the batch afresh while its
  manifest lists items, and says how to go on.
- `recover BATCH --from-manifest` rebuilds it (project ids, credits, states),
  applies the rescue file and polls the known projects; the next `run` sends only
  what was never sent: nothing is paid twice.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from e2e_support import batcher_command, check_against_journal, cli_env, prompts, write_job

from batcher.ledger import Ledger

PROMPTS = 60


def batcher(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        batcher_command(*args),
        env=cli_env(MAGIC_HOUR_API_KEY="sandbox-key", BATCHER_RETRY_INSTANT="1"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr and "ExceptionGroup" not in stderr, stderr


def wait_for_creates(sandbox: Any, count: int, process: subprocess.Popen[str]) -> None:
    import time

    deadline = time.monotonic() + 60
    while len(sandbox.journal()) < count:
        assert process.poll() is None, "the run ended before the fault"
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.slow
def test_a_ledger_deleted_mid_run_is_noticed_refused_and_recovered(
    tmp_path: Path, external_sandbox: Any
) -> None:
    sandbox = external_sandbox("--render-seconds", "0.5", "--latency", "0.05")
    job = write_job(tmp_path, prompts(PROMPTS), name="night")
    path = tmp_path / "ledger.db"
    db = f"sqlite:///{path}"
    out = tmp_path / "out"
    common = ["--base-url", sandbox.base_url, "--db", db]
    run = subprocess.Popen(
        batcher_command("run", str(job), *common, "--out", str(out), "--concurrency", "2"),
        env=cli_env(MAGIC_HOUR_API_KEY="sandbox-key", BATCHER_RETRY_INSTANT="1"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_creates(sandbox, 10, run)
    path.unlink()
    said = "was removed while this run was using it"
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 1, stderr
    no_traceback(stderr)
    [line] = [line for line in stderr.splitlines() if line.startswith("error:") and said in line]
    assert "sending stopped" in line and "rescue" in line, stderr
    sent = len(sandbox.journal())
    assert sent < PROMPTS, "sending stopped"

    # Every item paid for has a line with its project id: in the sent log when it
    # was created, in the manifest when it finished.
    manifest = out / "manifest.jsonl"  # --out is the batch folder itself
    lines = [
        line
        for path in (out / ".sent.jsonl", manifest)
        if path.exists()
        for line in path.read_text().splitlines()
    ]
    latest = {entry["key"]: entry for entry in map(json.loads, lines)}
    assert {e["project_id"] for e in latest.values()} >= {e["id"] for e in sandbox.journal()}

    # The ledger does not know the batch now: a fresh start would pay again.
    refused = batcher(tmp_path, "run", str(job), *common, "--out", str(out))
    assert refused.returncode == 2, refused.stderr
    no_traceback(refused.stderr)
    assert f"batcher recover night --from-manifest {manifest}" in refused.stderr, refused.stderr
    assert len(sandbox.journal()) == sent, "nothing sent"

    recovered = batcher(tmp_path, "recover", "night", "--from-manifest", str(manifest), *common)
    assert recovered.returncode == 0, recovered.stderr
    no_traceback(recovered.stderr)
    assert "rebuilt batch night from" in recovered.stdout, recovered.stdout
    assert len(sandbox.journal()) == sent, "recover sends nothing"
    with Ledger.open(db) as ledger:
        [summary] = ledger.batch_summaries()
        items = list(ledger.items(summary.id))
    assert len(items) == len(latest)
    check_against_journal(db, sandbox.journal(), settled=False)
    assert summary.credits_charged == sum(e["credits_charged"] for e in sandbox.journal())

    # A recovered batch again: it is known, so run goes on and sends only the rest.
    again = batcher(tmp_path, "recover", "night", "--from-manifest", str(manifest), *common)
    assert again.returncode == 2 and "already has batch 'night'" in again.stderr
    finish(tmp_path, sandbox, job, common, out)


def finish(tmp_path: Path, sandbox: Any, job: Path, common: list[str], out: Path) -> None:
    """`run` of the job file completes the batch with every prompt paid once."""
    final = batcher(tmp_path, "run", str(job), *common, "--out", str(out))
    assert final.returncode == 0, final.stderr
    no_traceback(final.stderr)
    journal = sandbox.journal()
    states = check_against_journal(common[common.index("--db") + 1], journal)
    assert states.get("complete") == PROMPTS, states
    assert len(journal) == PROMPTS, "a prompt was paid twice"


@pytest.mark.slow
def test_a_ledger_emptied_between_runs_is_refused_then_recovered(
    tmp_path: Path, external_sandbox: Any
) -> None:
    """The issue's case: a ledger truncated to 0 bytes looked like a new one."""
    sandbox = external_sandbox("--render-seconds", "0.2")
    job = write_job(tmp_path, prompts(PROMPTS), name="night")
    path = tmp_path / "ledger.db"
    out = tmp_path / "out"
    common = ["--base-url", sandbox.base_url, "--db", f"sqlite:///{path}"]
    # Half the night: a job file with the first 30 prompts.
    (tmp_path / "half").mkdir()
    half = write_job(tmp_path / "half", prompts(PROMPTS)[:30], name="night")
    first = batcher(tmp_path, "run", str(half), *common, "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert len(sandbox.journal()) == 30
    path.write_bytes(b"")

    refused = batcher(tmp_path, "run", str(job), *common, "--out", str(out))
    assert refused.returncode == 2, refused.stderr
    no_traceback(refused.stderr)
    line = [line for line in refused.stderr.splitlines() if "is not in ledger" in line]
    assert len(line) == 1 and "30 creates sent and 30 items finished" in line[0], refused.stderr
    assert len(sandbox.journal()) == 30, "nothing sent"

    manifest = out / "manifest.jsonl"
    recovered = batcher(tmp_path, "recover", "night", "--from-manifest", str(manifest), *common)
    assert recovered.returncode == 0, recovered.stderr
    assert "30 items (complete 30), marked recovered" in recovered.stdout, recovered.stdout
    assert "30 project(s) polled" in recovered.stdout
    with closing(sqlite3.connect(path)) as conn:
        marked = conn.execute("SELECT count(*) FROM items WHERE recovered").fetchone()
    assert marked == (30,)
    finish(tmp_path, sandbox, job, common, out)


def test_a_bad_manifest_line_is_refused_and_nothing_written(
    tmp_path: Path, external_sandbox: Any
) -> None:
    sandbox = external_sandbox()
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"key": "a", "prompt": "p", "model": "m"}\n')
    db = tmp_path / "ledger.db"
    result = batcher(
        tmp_path,
        "recover",
        "night",
        "--from-manifest",
        str(manifest),
        "--db",
        f"sqlite:///{db}",
        "--base-url",
        sandbox.base_url,
    )
    assert result.returncode == 2, result.stderr
    assert f"{manifest}:1: aspect_ratio: missing or not text" in result.stderr
    assert not db.exists()
