"""The library API as a program uses it: `import batcher`, one call per command,
typed results, the error tree, nothing printed; and the README's example."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from e2e_support import Batch, prompts, write_job

import batcher
from batcher.run.observer import RunProgress
from batcher.run.prepare import PreparedBatch
from batcher.run.summary import summary_json
from batcher.sandbox import SandboxHandle

MakeSandbox = Callable[..., SandboxHandle]
MakeBatch = Callable[..., Batch]

ROOT = Path(__file__).parents[2]
SUMMARY_KEYS = [
    "batch",
    "exit_code",
    "items",
    "states",
    "credits_charged",
    "credits_refunded",
    "credits_net",
    "started_at",
    "finished_at",
    "duration_s",
    "out",
    "manifest",
    "gallery",
]
HEAVY = ("sqlalchemy", "httpx", "httpcore", "uvicorn", "anyio", "alembic")


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use it as a library", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README shows the library in a python block"
    return match.group(1)


def test_the_readme_example_runs(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "jobs", tmp_path / "jobs")
    done = subprocess.run(
        [sys.executable, "-c", readme_example()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "the library prints nothing of its own"
    first, second = done.stdout.splitlines()
    assert first.startswith("0 {'pending': 0, ") and first.endswith(" 85 out/demo/index.html")
    assert "'complete': 12" in first
    assert second.startswith("demo {") and "'complete': 12" in second


def test_import_batcher_and_plan_stay_cheap() -> None:
    code = (
        "import sys, batcher\n"
        "assert callable(batcher.run) and callable(batcher.plan)\n"
        f"batcher.validate([{str(ROOT / 'jobs' / 'demo.yaml')!r}])\n"
        f"batcher.plan({str(ROOT / 'jobs' / 'demo.yaml')!r})\n"
        "from batcher.cli import main\n"
        f"main(['validate', {str(ROOT / 'jobs' / 'demo.yaml')!r}], standalone_mode=False)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_batcher_run_is_the_call_even_once_the_run_package_is_loaded() -> None:
    import batcher.run.batch_run  # the pool's package, loaded

    assert batcher.run.__name__ == "run"
    assert callable(batcher.run)
    assert batcher.RunSummary.__name__ == "RunSummary"
    with pytest.raises(AttributeError):
        _ = batcher.no_such_name  # type: ignore[attr-defined]


class Recorder(batcher.RunObserver):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.prepared_batch: PreparedBatch | None = None
        self.summaries: list[batcher.RunSummary] = []

    def warning(self, message: str) -> None:
        self.events.append(f"warning: {message}")

    def prepared(self, prepared: PreparedBatch, db: str) -> None:
        self.prepared_batch = prepared
        self.events.append(f"prepared {prepared.batch.name} in {db}")

    async def follow(self, progress: RunProgress) -> None:
        self.events.append(f"follow {progress.batch} {progress.todo} wait={progress.wait}")
        assert progress.counters is progress.run.counters

    def finished(self, summary: batcher.RunSummary) -> None:
        self.summaries.append(summary)
        self.events.append(f"finished {summary.exit_code}")


def test_run_async_inside_an_event_loop_with_an_observer(
    tmp_path: Path, make_sandbox: MakeSandbox, capfd: pytest.CaptureFixture[str]
) -> None:
    sandbox = make_sandbox()
    job = write_job(tmp_path, prompts(4), name="async")
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    recorder = Recorder()

    async def main() -> batcher.RunSummary:
        return await batcher.run_async(
            job,
            base_url=sandbox.base_url,
            env={"MAGIC_HOUR_API_KEY": sandbox.key},
            db=db,
            out=tmp_path / "out",
            observer=recorder,
        )

    summary = anyio.run(main)
    assert recorder.events == [f"prepared async in {db}", "follow async 4 wait=True", "finished 0"]
    assert recorder.summaries == [summary]
    assert dataclasses.is_dataclass(summary)
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.exit_code = 3  # type: ignore[misc]
    assert summary.succeeded and summary.exit_code == 0
    assert summary.batch == "async" and summary.items == 4
    assert summary.states["complete"] == 4
    assert summary.credits_charged == sum(e.credits_charged for e in sandbox.journal()) == 20
    assert summary.credits_net == 20 and summary.credits_refunded == 0
    assert summary.out == tmp_path / "out"
    assert summary.manifest == tmp_path / "out" / "manifest.jsonl"
    assert summary.manifest.is_file()
    # Images were downloaded: the gallery was refreshed at the end.
    assert summary.gallery == tmp_path / "out" / "index.html"
    assert summary.gallery.is_file()
    assert summary.counters.sent == 4
    assert summary.finished_at >= summary.started_at
    document = summary_json(summary)
    assert list(document) == SUMMARY_KEYS
    assert json.loads(json.dumps(document)) == document
    assert document["started_at"].endswith("Z")
    # Nothing printed by the library itself.
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_bad_input_raises_before_anything_is_sent(
    tmp_path: Path, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox()
    job = write_job(tmp_path, prompts(2), name="refused")
    taken = tmp_path / "taken"
    taken.write_text("a file")
    settings: dict[str, Any] = {
        "base_url": sandbox.base_url,
        "env": {"MAGIC_HOUR_API_KEY": sandbox.key},
        "db": f"sqlite:///{tmp_path / 'ledger.db'}",
    }
    with pytest.raises(batcher.OutputFolderError, match="is a file, not a folder") as caught:
        batcher.run(job, out=taken, **settings)
    assert caught.value.exit_code == 2
    with pytest.raises(batcher.ConfigError, match="no API key"):
        batcher.run(job, out=tmp_path / "out", **{**settings, "env": {}})
    with pytest.raises(batcher.ConfigError, match="run_many runs several"):
        batcher.run([job, job], **settings)
    with pytest.raises(batcher.ConfigError, match="concurrency must be at least 1"):
        batcher.run(job, concurrency=0, **settings)
    assert sandbox.journal() == []
    assert not (tmp_path / "ledger.db").exists()
    with pytest.raises(batcher.LedgerMissingError):
        batcher.resume("refused", **settings)


def test_validate_returns_problems_and_plan_raises_them(tmp_path: Path) -> None:
    good = write_job(tmp_path, prompts(3), name="good")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nprompts:\n  - prompt: x\n    model: no-such-model\n")
    report = batcher.validate([good, bad])
    assert not report.ok and report.files == 2 and report.bad_files == 1
    assert [job.batch for job in report.jobs] == ["good"]
    [problem] = report.problems
    assert (problem.path, problem.line, problem.field) == (str(bad), 4, "prompts[0].model")
    with pytest.raises(batcher.JobFileError) as caught:
        batcher.plan([good, bad])
    assert caught.value.problems == report.problems
    assert (caught.value.files, caught.value.bad_files) == (2, 1)
    plan = batcher.plan(good)
    assert (plan.items, plan.images, plan.estimated_credits) == (3, 3, 15)
    assert [(row.model, row.items) for row in plan.models] == [("z-image-turbo", 3)]


def test_the_reading_calls_and_their_async_twins(make_batch: MakeBatch, tmp_path: Path) -> None:
    batch = make_batch([*prompts(2), *prompts(1, model="seedream-v4")], tier="free")
    assert batch.run().exit_code == 1
    db = batch.db_url
    [row] = batcher.status(db=db)
    assert row.states["failed"] == 1 and row.credits_net == 10
    audit = batcher.audit(by="model", db=db, chart=tmp_path / "spend.svg")
    assert [dict(r.group)["model"] for r in audit.rows] == ["z-image-turbo"]
    assert audit.totals.credits_net == 10
    assert (tmp_path / "spend.svg").read_text().count("z-image-turbo") >= 1
    env = {"MAGIC_HOUR_API_KEY": batch.sandbox.key}

    async def twins() -> tuple[Any, ...]:
        return (
            await batcher.status_async(db=db),
            await batcher.items_async("e2e", "failed", db=db),
            await batcher.audit_async(db=db),
            await batcher.reconcile_async(db=db, base_url=batch.sandbox.base_url, env=env),
            await batcher.account_async(base_url=batch.sandbox.base_url, env=env),
        )

    status, items, totals, reconciled, account = anyio.run(twins)
    [status_row] = status
    assert status_row.states == row.states
    [failed] = items
    assert failed.reason is not None and failed.reason.startswith("refused by the API (HTTP 403")
    assert totals.totals.credits_net == 10
    assert reconciled.complete and reconciled.projects_polled == 2
    assert account.tier == "free"
