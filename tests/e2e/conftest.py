"""Fixtures for end-to-end tests: real job files, a real SQLite ledger, the
sandbox over real HTTP on loopback, and the runner as the CLI drives it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Batch, ExternalSandbox, batcher_command, cli_env, write_job

from batcher.client import retry


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    with retry.instant():
        yield


@pytest.fixture
def make_batch(tmp_path: Path, make_sandbox: Any) -> Any:
    def make(
        job_prompts: Sequence[Any], *, job: dict[str, Any] | None = None, **sandbox: Any
    ) -> Batch:
        handle = make_sandbox(**sandbox)
        path = write_job(tmp_path, job_prompts, **(job or {}))
        return Batch(tmp_path, path, handle, f"sqlite:///{tmp_path / 'ledger.db'}")

    return make


@pytest.fixture
def external_sandbox() -> Iterator[Any]:
    """`batcher sandbox` in its own process, so killing batcher leaves it standing."""
    started: list[subprocess.Popen[str]] = []

    def start(*flags: str) -> ExternalSandbox:
        process = subprocess.Popen(
            batcher_command("sandbox", "--port", "0", *flags),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=cli_env(),
        )
        started.append(process)
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:"), base_url
        return ExternalSandbox(process, base_url)

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def cli(tmp_path: Path, make_sandbox: Any) -> Any:
    """`cli(name=..., count=..., **sandbox)`: a job of `count` prompts against a new
    sandbox, driven through the real CLI (tests/e2e/nightly_support.py)."""
    from nightly_support import Cli

    def make(name: str = "nightly", count: int = 6, **sandbox: object) -> Cli:
        return Cli(tmp_path, make_sandbox(**sandbox), name, count)

    return make
