"""`status` never waits on a writer (issue 11, point 8): while another process
holds SQLite's write lock mid-transaction, the real CLI answers at once from the
last committed snapshot, with the default busy timeout of 30 s. A rescue file
waiting to be applied does not make it wait either: it is left for later, and
applied by the next command once the lock is free.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from e2e_support import batcher_command, cli_env
from test_ledger_outage import write_locked

from batcher.jobfile.items import ItemSettings, JobItem
from batcher.ledger import Created, Ledger, utcnow
from batcher.ledger.rescue import entry

SETTINGS = ItemSettings("z-image-turbo", None, "1:1", "general", 1)


def status(tmp_path: Path, db: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        batcher_command("status", "--db", db),
        env=cli_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, time.monotonic() - started


def test_status_answers_at_once_while_another_process_writes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    db = f"sqlite:///{path}"
    with Ledger.open(db) as ledger:
        batch, _ = ledger.open_batch(
            "night", job_path=None, job_hash=None, budget=None, settings={}
        )
        items = [JobItem(n, f"k{n}", f"prompt {n}", SETTINGS, "job.yaml", n + 1) for n in range(5)]
        ledger.sync_items(
            batch.id, items, estimate=lambda _s: (5, True), project_name=lambda i: i.key
        )
    # An answer a lost run left in the rescue file: applying it needs the write lock.
    rescue = tmp_path / "ledger.db.rescue.jsonl"
    line = entry(
        Created(1, 1, "p-1", 5, 5, False), ledger=str(path), batch="night", key="k0", at=utcnow()
    )
    rescue.write_text(json.dumps(line) + "\n")

    with write_locked(path):
        result, elapsed = status(tmp_path, db)
        assert result.returncode == 0, result.stderr
        assert elapsed < 10, f"status waited {elapsed:.1f} s on the writer"
        assert "night" in result.stdout and "pending" in result.stdout, result.stdout
        assert f"rescue file {rescue} waits: the ledger is busy" in result.stderr, result.stderr
        assert rescue.exists()

    result, _ = status(tmp_path, db)
    assert result.returncode == 0, result.stderr
    assert f"applied the rescue file {rescue} first: 1 answers recorded now" in result.stderr
    with Ledger.open(db) as ledger:
        [item] = [i for i in ledger.items(1) if i.key == "k0"]
        assert (item.state, item.project_id) == ("submitted", "p-1")
