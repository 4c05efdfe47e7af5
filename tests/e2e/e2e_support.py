"""Helpers for end-to-end tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import yaml

import batcher
from batcher.client.magic_hour import MagicHourClient
from batcher.jobfile.catalog import load_catalog
from batcher.ledger import Ledger
from batcher.run import prepare
from batcher.run.batch_run import BatchRun, ImageApi, RunOptions, RunResult
from batcher.run.observer import RunObserver, RunProgress
from batcher.run.summary import RunSummary
from batcher.sandbox import SandboxHandle
from batcher.settings import ApiConfig


def write_job(folder: Path, prompts: Sequence[Any], **top: Any) -> Path:
    document = {"name": top.pop("name", "e2e"), **top, "prompts": list(prompts)}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def prompts(count: int, model: str = "z-image-turbo", **settings: Any) -> list[dict[str, Any]]:
    return [{"prompt": f"test prompt number {i}", "model": model, **settings} for i in range(count)]


class Watch(RunObserver):
    """Keeps the BatchRun the library drives, for tests that look inside it."""

    def __init__(self) -> None:
        self.runs: list[BatchRun] = []

    async def follow(self, progress: RunProgress) -> None:
        self.runs.append(progress.run)


@dataclass
class Batch:
    """A job file, its ledger and the sandbox it runs against."""

    tmp: Path
    job: Path
    sandbox: SandboxHandle
    db_url: str

    def ledger(self) -> Ledger:
        return Ledger.open(self.db_url)

    @property
    def name(self) -> str:
        [plan] = batcher.plan([self.job]).jobs
        return plan.batch

    def run(
        self,
        *,
        resume: bool = False,
        retry_failed: bool = False,
        resend_unconfirmed: bool = False,
        budget: int | None = None,
        preflight: bool = False,
        key: str | None = None,
        base_url: str | None = None,
        after: Callable[[BatchRun], None] | None = None,
        out_dir: Path | None = None,
        **settings: Any,
    ) -> RunSummary:
        """`batcher.run` (or `batcher.resume`) of the job against the sandbox, as the
        CLI calls it; `after` may look at the finished BatchRun."""
        watch = Watch()
        common: dict[str, Any] = {
            "out": out_dir or self.tmp / "out",
            "concurrency": 8,
            **settings,
            "budget": budget,
            "preflight": preflight,
            "retry_failed": retry_failed,
            "resend_unconfirmed": resend_unconfirmed,
            "db": self.db_url,
            "base_url": base_url or self.sandbox.base_url,
            "env": {"MAGIC_HOUR_API_KEY": key or self.sandbox.key},
            "observer": watch,
        }
        if resume:
            summary = batcher.resume(self.name, **common)
        else:
            summary = batcher.run([self.job], **common)
        if after is not None:
            [run] = watch.runs
            after(run)
        return summary


def run_runner(
    batch: Batch, client: Callable[[MagicHourClient], ImageApi], **options: Any
) -> RunResult:
    """The runner alone (no CLI, no library), on a prepared batch, with the API
    client wrapped by `client`: a seam for faults inside the run (a folder that
    turns into a file mid-download...). Everything else drives the library."""
    options.setdefault("out_dir", batch.tmp / "out")
    catalog = load_catalog()
    api = ApiConfig(batch.sandbox.base_url, batch.sandbox.key)
    with batch.ledger() as ledger:
        [spec] = prepare.load_jobs([batch.job], catalog)
        prepared = prepare.prepare_batch(
            ledger, spec, catalog, budget=None, retry_failed=False, resend_unconfirmed=False
        )

        async def go() -> RunResult:
            async with MagicHourClient(api, concurrency=options.get("concurrency", 8)) as real:
                run = BatchRun(ledger, client(real), prepared.batch, RunOptions(**options))
                return await run.run()

        return anyio.run(go)


def check_against_journal(
    db_url: str, journal: Sequence[Mapping[str, Any]], *, settled: bool = True
) -> dict[str, int]:
    """Hold the ledger against what the server saw (its journal); return the states.

    - Every project the ledger knows was charged what the server says, and
      refunded what it says once settled (a run killed before it saw a refund
      leaves it to the next one).
    - What the server created and the ledger never heard of belongs to an item in
      doubt: `unconfirmed`, or right after a kill `sending` (intent written,
      answer not).
    - No item has two live projects: only a failed render is created again.
    """
    with Ledger.open(db_url) as ledger:
        [summary] = ledger.batch_summaries()
        items = list(ledger.items(summary.id))
        known = ledger.known_projects(summary.id)
    by_id = {entry["id"]: entry for entry in journal}
    for project in known:
        entry = by_id[project.project_id]
        assert entry["credits_charged"] == project.charged, project.project_id
        if settled:
            assert entry["credits_refunded"] == project.refunded, project.project_id
        else:
            assert project.refunded in (0, entry["credits_refunded"]), project.project_id
    doubtful = ("unconfirmed",) if settled else ("sending", "unconfirmed")
    in_doubt = {i.project_name for i in items if i.state in doubtful}
    known_ids = {project.project_id for project in known}
    for entry in journal:
        if entry["id"] not in known_ids:
            assert entry["name"] in in_doubt, f"{entry['id']} was created for nothing we know"
    live: dict[str, int] = {}
    for entry in journal:
        if entry["status"] != "error":
            live[entry["name"]] = live.get(entry["name"], 0) + 1
    twice = [name for name, count in live.items() if count > 1]
    assert not twice, f"created twice: {twice}"
    if settled:
        assert not [i for i in items if i.state == "sending"], "a send left half-recorded"
    return dict(summary.states)


def assert_exactly_once(batch: Batch) -> None:
    check_against_journal(batch.db_url, [entry.as_dict() for entry in batch.sandbox.journal()])


def batcher_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "batcher", *args]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAGIC_HOUR_", "BATCHER_"))}
    env.update(extra)
    return env


@dataclass
class ExternalSandbox:
    process: subprocess.Popen[str]
    base_url: str

    def journal(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = httpx.get(f"{self.base_url}/_sandbox/journal").json()[
            "entries"
        ]
        return entries
