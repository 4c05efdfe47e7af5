"""Helpers for end-to-end tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import yaml

from batcher import service
from batcher.api import MagicHourClient
from batcher.catalog import load_catalog
from batcher.config import ApiConfig
from batcher.ledger.store import Ledger
from batcher.runner import RunOptions, RunResult
from batcher.sandbox import SandboxHandle


def write_job(folder: Path, prompts: Sequence[Any], **top: Any) -> Path:
    document = {"name": top.pop("name", "e2e"), **top, "prompts": list(prompts)}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def prompts(count: int, model: str = "z-image-turbo", **settings: Any) -> list[dict[str, Any]]:
    return [{"prompt": f"test prompt number {i}", "model": model, **settings} for i in range(count)]


@dataclass
class Batch:
    """A job file, its ledger and the sandbox it runs against."""

    tmp: Path
    job: Path
    sandbox: SandboxHandle
    db_url: str

    def ledger(self) -> Ledger:
        return Ledger.open(self.db_url)

    def run(
        self,
        *,
        resume: bool = False,
        retry_failed: bool = False,
        resend_unconfirmed: bool = False,
        budget: int | None = None,
        preflight: bool = False,
        key: str | None = None,
        **options: Any,
    ) -> RunResult:
        options.setdefault("out_dir", self.tmp / "out")
        options.setdefault("concurrency", 8)
        catalog = load_catalog()
        api = ApiConfig(self.sandbox.base_url, key or self.sandbox.key)
        with self.ledger() as ledger:
            if resume:
                [spec] = service.load_jobs([self.job], catalog)
                prepared = service.resume_batch(
                    ledger,
                    spec.name,
                    budget=budget,
                    retry_failed=retry_failed,
                    resend_unconfirmed=resend_unconfirmed,
                )
            else:
                [spec] = service.load_jobs([self.job], catalog)
                prepared = service.prepare_batch(
                    ledger,
                    spec,
                    catalog,
                    budget=budget,
                    retry_failed=retry_failed,
                    resend_unconfirmed=resend_unconfirmed,
                )

            async def go() -> RunResult:
                async with MagicHourClient(api, concurrency=options["concurrency"]) as client:
                    if preflight:
                        await service.preflight(client, ledger, prepared.batch, catalog)
                    run = service.new_run(ledger, client, prepared.batch, RunOptions(**options))
                    return await run.run()

            return anyio.run(go)

    def journal_by_name(self) -> dict[str, list[Any]]:
        entries: dict[str, list[Any]] = {}
        for entry in self.sandbox.journal():
            entries.setdefault(entry.name or "", []).append(entry)
        return entries


def assert_exactly_once(batch: Batch) -> None:
    """Every item the ledger knows a project for was created exactly once, and the
    ledger's credits equal the server's for those projects; anything else the
    server created belongs to an item in doubt."""
    with batch.ledger() as ledger:
        [summary] = ledger.batch_summaries()
        batch_id = summary.id
        items = list(ledger.items(batch_id))
        charged = ledger.charged_projects(batch_id)
    journal = {entry.id: entry for entry in batch.sandbox.journal()}
    known = {project_id for _, project_id, _, _ in charged}
    for _, project_id, credits, refunded in charged:
        entry = journal[project_id]
        assert entry.credits_charged == credits, project_id
        assert entry.credits_refunded == refunded, project_id
    in_doubt_names = {i.project_name for i in items if i.state == "unconfirmed"}
    for entry in journal.values():
        if entry.id not in known:
            assert entry.name in in_doubt_names, f"unrecorded project {entry.id} ({entry.name})"
    live_names = [journal[p].name for p in known if journal[p].status != "error"]
    assert len(live_names) == len(set(live_names)), "an item has two live projects"
    ledger_net = sum(c - r for _, _, c, r in charged)
    server_net = sum(journal[p].credits_charged - journal[p].credits_refunded for p in known)
    assert ledger_net == server_net


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
