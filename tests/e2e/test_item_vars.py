"""A template's variable values reach every output through the real CLI: the
ledger, `items` (text and --json), `status` (--json and the table) and the
manifest, and an appended value sends only the new combinations."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from e2e_support import ExternalSandbox, batcher_command, cli_env

pytestmark = pytest.mark.slow

JOB = """\
name: varied
defaults: {{model: z-image-turbo, resolution: 640px}}
vars:
  colour: [{colours}]
prompts:
  - template: "A {{colour}} mug"
    matrix:
      model: [z-image-turbo, flux-schnell]
  - "A plain prompt"
"""


def write(folder: Path, colours: list[str]) -> Path:
    job = folder / "job.yaml"
    job.write_text(JOB.format(colours=", ".join(colours)), encoding="utf-8")
    return job


def cli(tmp: Path, *args: str, sandbox: ExternalSandbox | None = None) -> Any:
    command = batcher_command("-q", *args, "--db", f"sqlite:///{tmp / 'ledger.db'}")
    if sandbox is not None:
        command += ["--base-url", sandbox.base_url, "--out", str(tmp / "out"), "--no-preflight"]
    env = cli_env(MAGIC_HOUR_API_KEY="sandbox-key", BATCHER_RETRY_INSTANT="1")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_vars_in_the_ledger_items_status_and_manifest_and_only_new_ones_sent(
    tmp_path: Path, external_sandbox: Any
) -> None:
    sandbox = external_sandbox("--render-seconds", "0.05")
    done = cli(tmp_path, "run", str(write(tmp_path, ["red", "teal"])), sandbox=sandbox)
    assert done.returncode == 0, done.stderr
    assert len(sandbox.journal()) == 5

    # The ledger: one JSON object per combination, NULL for the plain prompt.
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        stored = dict(db.execute("SELECT prompt || ' ' || model, vars FROM items").fetchall())
    assert json.loads(stored["A red mug flux-schnell"]) == {
        "colour": "red",
        "model": "flux-schnell",
    }
    assert stored["A plain prompt z-image-turbo"] is None

    listed = cli(tmp_path, "items", "varied", "--json")
    assert listed.returncode == 0, listed.stderr
    by_prompt = {(i["prompt"], i["model"]): i["vars"] for i in json.loads(listed.stdout)["items"]}
    teal = {"colour": "teal", "model": "z-image-turbo"}
    assert by_prompt[("A teal mug", "z-image-turbo")] == teal
    assert by_prompt[("A plain prompt", "z-image-turbo")] == {}

    table = cli(tmp_path, "items", "varied")
    assert "colour=teal model=flux-schnell" in table.stdout

    status = cli(tmp_path, "status", "--json")
    [batch] = json.loads(status.stdout)["batches"]
    assert batch["vars"] == ["colour", "model"]
    assert "colour, model" in cli(tmp_path, "status").stdout

    text = (tmp_path / "out" / "manifest.jsonl").read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    manifest = {(line["prompt"], line["model"]): line["vars"] for line in lines}
    assert manifest[("A red mug", "flux-schnell")] == {"colour": "red", "model": "flux-schnell"}
    assert manifest[("A plain prompt", "z-image-turbo")] == {}

    # A colour appended: exactly its two combinations are sent, nothing else.
    done = cli(tmp_path, "run", str(write(tmp_path, ["red", "teal", "gold"])), sandbox=sandbox)
    assert done.returncode == 0, done.stderr
    new = sandbox.journal()[5:]
    assert sorted((e["body"]["style"]["prompt"], e["body"]["model"]) for e in new) == [
        ("A gold mug", "flux-schnell"),
        ("A gold mug", "z-image-turbo"),
    ]
