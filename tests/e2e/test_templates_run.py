"""Template jobs run through the real CLI against the sandbox: the exact set of
creates an expansion sends, and only the new combinations after an append."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path
from typing import Any

import pytest
from e2e_support import ExternalSandbox, batcher_command, check_against_journal, cli_env

EXAMPLES = Path(__file__).parent.parent.parent / "jobs"

pytestmark = pytest.mark.slow

JOB = """\
name: templated
defaults: {{resolution: 640px}}
vars:
  colour: [{colours}]
  product: {{file: products.txt}}
prompts:
  - template: "A {{colour}} {{product}}"
    matrix:
      model: [z-image-turbo, flux-schnell]
  - template: "{{hero}} meets {{rival}}"
    vars: {{hero: [a knight, a robot], rival: [a dragon, a virus]}}
    zip: [hero, rival]
    name: "poster: {{hero}} vs {{rival}}"
    model: qwen-image-2.1
"""


def write(folder: Path, colours: list[str], products: list[str]) -> Path:
    (folder / "products.txt").write_text("".join(f"{p}\n" for p in products), encoding="utf-8")
    job = folder / "job.yaml"
    job.write_text(JOB.format(colours=", ".join(colours)), encoding="utf-8")
    return job


def sent(sandbox: ExternalSandbox) -> list[tuple[str, str, str]]:
    """(prompt, model, name) of every create the server accepted, in order."""
    return [
        (entry["body"]["style"]["prompt"], entry["body"]["model"], entry["body"]["name"])
        for entry in sandbox.journal()
    ]


def prompts_and_models(entries: list[tuple[str, str, str]]) -> set[tuple[str, str]]:
    return {(prompt, model) for prompt, model, _ in entries}


def run_job(job: Path, sandbox: ExternalSandbox, tmp: Path) -> subprocess.CompletedProcess[str]:
    # Not -q: the test reads the preparation note ("10 new item(s)"), which -q drops.
    command = batcher_command(
        "run",
        str(job),
        "--base-url",
        sandbox.base_url,
        "--db",
        f"sqlite:///{tmp / 'ledger.db'}",
        "--out",
        str(tmp / "out"),
        "--no-preflight",
    )
    env = cli_env(MAGIC_HOUR_API_KEY="sandbox-key", BATCHER_RETRY_INSTANT="1")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def expected(colours: list[str], products: list[str]) -> set[tuple[str, str]]:
    return {
        (f"A {colour} {product}", model)
        for colour, product, model in itertools.product(
            colours, products, ["z-image-turbo", "flux-schnell"]
        )
    }


def test_an_expansion_sends_exactly_its_combinations_then_only_new_ones(
    tmp_path: Path, external_sandbox: Any
) -> None:
    sandbox = external_sandbox("--render-seconds", "0.05")
    job = write(tmp_path, ["red", "teal"], ["mug", "tote bag"])
    done = run_job(job, sandbox, tmp_path)
    assert done.returncode == 0, done.stderr
    first = sent(sandbox)
    templated = prompts_and_models([entry for entry in first if entry[1] != "qwen-image-2.1"])
    assert templated == expected(["red", "teal"], ["mug", "tote bag"])
    posters = sorted((prompt, name) for prompt, model, name in first if model == "qwen-image-2.1")
    assert posters == [
        ("a knight meets a dragon", "poster: a knight vs a dragon"),
        ("a robot meets a virus", "poster: a robot vs a virus"),
    ]
    assert len(first) == 8 + 2  # each combination once

    # A colour and a product appended: only the combinations they make are sent.
    job = write(tmp_path, ["red", "teal", "gold"], ["mug", "tote bag", "cup"])
    done = run_job(job, sandbox, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "10 new item(s)" in done.stderr
    new = sent(sandbox)[len(first) :]
    assert prompts_and_models(new) == (
        expected(["red", "teal", "gold"], ["mug", "tote bag", "cup"]) - templated
    )
    assert len(new) == 18 - 8

    # And re-running the file sends nothing at all.
    done = run_job(job, sandbox, tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(sandbox.journal()) == len(first) + len(new)
    states = check_against_journal(f"sqlite:///{tmp_path / 'ledger.db'}", sandbox.journal())
    assert states["complete"] == 20


def test_the_matrix_example_runs_under_sandbox(tmp_path: Path) -> None:
    command = batcher_command(
        "-q",
        "run",
        str(EXAMPLES / "matrix-example.yaml"),
        "--sandbox",
        "--db",
        f"sqlite:///{tmp_path / 'ledger.db'}",
        "--out",
        str(tmp_path / "out"),
        "--no-download",
    )
    done = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "38 items (38 complete)" in done.stdout  # -q: the one-line summary
