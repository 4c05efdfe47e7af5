"""The CLI as cron runs it, for the nightly-operations tests: one job against one
sandbox through `python -m batcher`."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from e2e_support import batcher_command, cli_env, prompts, write_job

from batcher.sandbox import SandboxHandle

DEADLINE_S = 120.0
ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


class Cli:
    """One job against one sandbox, through `python -m batcher`."""

    def __init__(self, tmp: Path, sandbox: SandboxHandle, name: str, count: int) -> None:
        self.tmp = tmp
        self.sandbox = sandbox
        self.name = name
        self.job = write_job(tmp, prompts(count), name=name)
        self.db = f"sqlite:///{tmp / 'ledger.db'}"
        self.env = cli_env(MAGIC_HOUR_API_KEY=sandbox.key, BATCHER_RETRY_INSTANT="1")
        self.common = ["--base-url", sandbox.base_url, "--db", self.db]
        self.out = ["--out", str(tmp / "out")]

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            batcher_command(*args),
            cwd=self.tmp,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            check=False,
        )

    def run(self, *flags: str) -> subprocess.CompletedProcess[str]:
        return self("run", str(self.job), *self.common, *self.out, *flags)

    def status(self) -> dict[str, object]:
        shown = self("status", self.name, "--json", "--db", self.db)
        assert shown.returncode == 0, shown.stderr
        [batch] = json.loads(shown.stdout)["batches"]
        return batch  # type: ignore[no-any-return]
