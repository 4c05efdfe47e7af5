"""`run --canary N` through the real CLI against the sandbox over loopback:
exactly N creates without a terminal, every kind before a repeat, the command
that continues sending exactly the rest, the question on a pseudo-terminal, the
re-estimate stopping a budgeted run whatever --yes says, and the prices seen
used by `plan --db`."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from e2e_support import ExternalSandbox, batcher_command, check_against_journal, cli_env

pytestmark = pytest.mark.slow

# Three kinds: (z-image-turbo, 640px, 1), (flux-schnell, 640px, 1), (qwen-image-2.1, 1k, 1);
# 4 + 4 + 2 = 10 items.
JOB = """\
name: canaried
defaults: {model: z-image-turbo, resolution: 640px}
vars:
  colour: [red, teal, gold, blue]
prompts:
  - template: "A {colour} mug"
    matrix:
      model: [z-image-turbo, flux-schnell]
  - template: "A {what} poster"
    vars: {what: [film, gig]}
    model: qwen-image-2.1
    resolution: 1k
"""
KINDS = 3
ITEMS = 10


def write(folder: Path, text: str = JOB) -> Path:
    job = folder / "job.yaml"
    job.write_text(text, encoding="utf-8")
    return job


def env() -> dict[str, str]:
    return cli_env(MAGIC_HOUR_API_KEY="sandbox-key", BATCHER_RETRY_INSTANT="1")


def run_args(tmp: Path, sandbox: ExternalSandbox, job: Path, *flags: str) -> list[str]:
    return batcher_command(
        "-q",
        "run",
        str(job),
        "--base-url",
        sandbox.base_url,
        "--db",
        f"sqlite:///{tmp / 'ledger.db'}",
        "--out",
        str(tmp / "out"),
        *flags,
    )


def cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def kinds(entries: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return [
        (e["body"]["model"], e["body"].get("resolution"), e["body"]["image_count"]) for e in entries
    ]


def continue_command(stderr: str) -> list[str]:
    found = re.search(r"continue with: (batcher .+?) \(\d+ item", " ".join(stderr.split()))
    assert found, stderr
    words = shlex.split(found.group(1))
    return [sys.executable, "-m", *words]


def test_without_a_terminal_exactly_n_creates_every_kind_first_then_the_rest(
    tmp_path: Path, external_sandbox: Any
) -> None:
    sandbox = external_sandbox("--render-seconds", "0.05")
    job = write(tmp_path)
    done = cli(run_args(tmp_path, sandbox, job, "--canary", "4"))
    assert done.returncode == 0, done.stderr
    first = sandbox.journal()
    assert len(first) == 4
    # Every kind once before any kind twice.
    assert len(set(kinds(first[:KINDS]))) == KINDS
    assert "canary of batch canaried" in done.stderr
    assert "6 item(s) not sent yet" in " ".join(done.stderr.split())
    images = list((tmp_path / "out").glob("*.png"))
    assert len(images) == 4  # waited for them and downloaded them

    # The command it printed sends exactly the rest, each item once.
    again = cli(continue_command(done.stderr))
    assert again.returncode == 0, again.stderr
    journal = sandbox.journal()
    assert len(journal) == ITEMS
    sent = Counter((e["body"]["style"]["prompt"], e["body"]["model"]) for e in journal)
    assert all(count == 1 for count in sent.values())
    states = check_against_journal(f"sqlite:///{tmp_path / 'ledger.db'}", journal)
    assert states["complete"] == ITEMS


def test_complete_items_count_towards_n_and_yes_goes_on(
    tmp_path: Path, external_sandbox: Any
) -> None:
    sandbox = external_sandbox("--render-seconds", "0.05")
    job = write(tmp_path)
    done = cli(run_args(tmp_path, sandbox, job, "--canary", "2"))
    assert done.returncode == 0, done.stderr
    assert len(sandbox.journal()) == 2
    # Two complete already: --canary 3 sends one more (the kind not seen yet),
    # then --yes sends the rest.
    done = cli(run_args(tmp_path, sandbox, job, "--canary", "3", "--yes"))
    assert done.returncode == 0, done.stderr
    journal = sandbox.journal()
    assert len(set(kinds(journal[:KINDS]))) == KINDS
    assert len(journal) == ITEMS
    assert "canary of batch canaried" in done.stderr


def on_a_terminal(args: list[str], answer: bytes | None) -> tuple[int | None, str]:
    """Run `args` with a pseudo-terminal as stdin and stderr; answer the question
    (None: press Ctrl-C at it). The exit code, None if it did not end in time."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        args, env=env(), stdin=terminal, stdout=subprocess.DEVNULL, stderr=terminal
    )
    os.close(terminal)
    seen = b""
    answered = False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # the child closed the terminal
                    break
                seen += chunk
            elif process.poll() is not None:
                break
            if not answered and b"[y/N]" in seen:
                if answer is None:
                    process.send_signal(signal.SIGINT)
                else:
                    os.write(controller, answer)
                answered = True
        try:
            code: int | None = process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    return code, seen.decode("utf-8", "replace")


@pytest.mark.parametrize(("answer", "creates"), [(b"y\n", ITEMS), (b"n\n", 3), (None, 3)])
def test_on_a_terminal_it_asks(
    tmp_path: Path, external_sandbox: Any, answer: bytes | None, creates: int
) -> None:
    sandbox = external_sandbox("--render-seconds", "0.05")
    job = write(tmp_path)
    code, shown = on_a_terminal(run_args(tmp_path, sandbox, job, "--canary", "3"), answer)
    assert code == 0, shown
    flat = " ".join(shown.split())
    # 7 left at 5 credits (6 of them) and 10 (one qwen poster) as just charged.
    assert "Continue with the remaining 7 items (about 40 credits)? [y/N]" in flat
    assert len(sandbox.journal()) == creates


def test_a_re_estimate_over_the_budget_stops_the_run_whatever_yes_says(
    tmp_path: Path, external_sandbox: Any
) -> None:
    # The sandbox charges three times the catalog: the canary's 2 items cost 15
    # each, and the 8 others at that price (120) no longer fit the 70 left.
    sandbox = external_sandbox("--render-seconds", "0.05", "--charge-factor", "3")
    job = write(
        tmp_path,
        "name: budgeted\nbudget: 100\ndefaults: {model: z-image-turbo, resolution: 640px}\n"
        "vars: {n: ['1', '2', '3', '4', '5', '6', '7', '8', '9', '10']}\n"
        "prompts:\n  - template: 'A mug number {n}'\n",
    )
    plan = cli(batcher_command("plan", str(job)))
    assert "the estimate (50) fits" in plan.stdout  # at catalog prices it would
    done = cli(run_args(tmp_path, sandbox, job, "--canary", "2", "--yes"))
    assert done.returncode == 1, done.stderr
    flat = " ".join(done.stderr.split())
    assert (
        "not continuing: the remaining 8 item(s) would cost about 120 credits at the "
        "charges just seen, but the budget has 70 left" in flat
    )
    assert len(sandbox.journal()) == 2
    status = cli(batcher_command("status", "--json", "--db", f"sqlite:///{tmp_path / 'ledger.db'}"))
    [batch] = json.loads(status.stdout)["batches"]
    assert batch["credits_net"] == 30 <= batch["budget"]


def test_plan_uses_the_prices_seen_in_the_ledger(tmp_path: Path, external_sandbox: Any) -> None:
    sandbox = external_sandbox("--render-seconds", "0.05", "--charge-factor", "3")
    job = write(tmp_path)
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    before = json.loads(cli(batcher_command("plan", str(job), "--json", "--db", db)).stdout)
    [qwen] = [m for m in before["jobs"][0]["models"] if m["model"] == "qwen-image-2.1"]
    assert qwen["basis"] == "lower_bound"  # no ledger yet: the catalog's from-price

    # A canary of one item: only z-image-turbo at 640px has been charged (15).
    done = cli(run_args(tmp_path, sandbox, job, "--canary", "1"))
    assert done.returncode == 0, done.stderr
    after = json.loads(cli(batcher_command("plan", str(job), "--json", "--db", db)).stdout)
    models = {m["model"]: m for m in after["jobs"][0]["models"]}
    [turbo] = models["z-image-turbo"]["kinds"]
    assert turbo["basis"] == "seen"
    assert turbo["credits_per_item"] == 15
    assert turbo["estimated_credits"] == 4 * 15
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", turbo["seen_on"])
    # Kinds never seen keep the catalog's figure and its basis.
    assert models["flux-schnell"]["basis"] == "catalog"
    assert models["flux-schnell"]["estimated_credits"] == 4 * 5
    assert models["qwen-image-2.1"]["basis"] == "lower_bound"

    table = cli(batcher_command("plan", str(job), "--db", db))
    turbo_line = next(line for line in table.stdout.splitlines() if "z-image-turbo" in line)
    assert f"seen on {turbo['seen_on']}" in turbo_line
    qwen_line = next(line for line in table.stdout.splitlines() if "qwen-image-2.1" in line)
    assert "lower bound" in qwen_line


def test_the_readme_walk_through_on_the_matrix_example(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "jobs" / "matrix-example.yaml"
    args = batcher_command(
        "-q",
        "run",
        str(example),
        "--sandbox",
        "--canary",
        "3",
        "--db",
        f"sqlite:///{tmp_path / 'ledger.db'}",
        "--out",
        str(tmp_path / "out"),
    )
    done = cli(args)
    assert done.returncode == 0, done.stderr
    flat = " ".join(done.stderr.split())
    assert "the rest: 35 item(s), about 180 credits at the charges just seen" in flat
    assert "35 item(s) not sent yet" in flat
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
    done = cli([*args, "--yes"])
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 38


def test_resume_takes_a_canary_too(tmp_path: Path, external_sandbox: Any) -> None:
    sandbox = external_sandbox("--render-seconds", "0.05")
    done = cli(run_args(tmp_path, sandbox, write(tmp_path), "--canary", "1"))
    assert done.returncode == 0, done.stderr
    resume = batcher_command(
        "-q",
        "resume",
        "canaried",
        "--canary",
        "2",
        "--base-url",
        sandbox.base_url,
        "--db",
        f"sqlite:///{tmp_path / 'ledger.db'}",
        "--out",
        str(tmp_path / "out"),
    )
    done = cli(resume)
    assert done.returncode == 0, done.stderr
    journal = sandbox.journal()
    assert len(set(kinds(journal))) == len(journal) == 2  # one more, of another kind
    assert "8 item(s) not sent yet" in " ".join(done.stderr.split())
