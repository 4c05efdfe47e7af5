"""The real command line of the sending commands, as a user or cron runs it.

`batcher` runs as a process (`python -m batcher`) against the sandbox over
loopback: the README's `run --sandbox` demo, the progress display on a
pseudo-terminal and off it, each exit code, and the refusals that must come
before anything is sent.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from e2e_support import batcher_command, cli_env, prompts, write_job

import batcher as batcher_api
from batcher.cli import main
from batcher.ledger import Ledger
from batcher.sandbox import SandboxHandle

MakeSandbox = Callable[..., SandboxHandle]

DEMO = Path(__file__).parents[2] / "jobs" / "demo.yaml"
DEADLINE_S = 120.0
ANSI = "\x1b["


def batcher(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = DEADLINE_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        batcher_command(*args),
        cwd=cwd,
        env=env or cli_env(BATCHER_RETRY_INSTANT="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def on_a_terminal(
    *args: str, cwd: Path, env: dict[str, str], columns: int = 100
) -> tuple[int, str]:
    """Run batcher with stdin, stdout and stderr on a pseudo-terminal `columns` wide;
    its exit code and everything it wrote there."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen(
        batcher_command(*args),
        cwd=cwd,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = process.wait(timeout=30)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
    return code, b"".join(chunks).decode("utf-8", "replace")


def _states(db: str) -> dict[str, int]:
    with Ledger.open(db) as ledger:
        [summary] = ledger.batch_summaries()
    return {state: n for state, n in summary.states.items() if n}


# --------------------------------------------------------------------------- the demo


def test_the_readme_demo_runs_with_no_key_and_no_credits(tmp_path: Path) -> None:
    """`batcher run jobs/demo.yaml --sandbox` in a fresh folder, as the README says."""
    shutil.copytree(DEMO.parent, tmp_path / "jobs")
    done = batcher("run", "jobs/demo.yaml", "--sandbox", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sandbox: serving the Magic Hour API emulator at http://127.0.0.1:" in done.stderr
    assert "Traceback" not in done.stderr
    images = sorted((tmp_path / "out" / "demo").glob("*.png"))
    assert len(images) == batcher_api.plan(DEMO).images == 14
    folder = tmp_path / "out" / "demo"
    lines = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    # One line per finished item (DESIGN.md); the creates, as they were accepted,
    # are in the sent log beside it, for `recover`.
    assert len(lines) == len({line["key"] for line in lines}) == 12
    assert {line["state"] for line in lines} == {"complete"}
    sent = [json.loads(line) for line in (folder / ".sent.jsonl").read_text().splitlines()]
    assert {line["key"] for line in sent} == {line["key"] for line in lines}
    assert {line["state"] for line in sent} == {"submitted"}
    assert _states(f"sqlite:///{tmp_path / 'batcher.db'}") == {"complete": 12}
    # The sandbox's batch is followed only by a sandbox: resume needs --sandbox too.
    again = batcher("resume", "demo", "--sandbox", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    refused = batcher("resume", "demo", cwd=tmp_path, env=cli_env(MAGIC_HOUR_API_KEY="k"))
    assert refused.returncode == 2
    assert "was run against the sandbox; add --sandbox" in refused.stderr


# --------------------------------------------------------------------------- progress


def test_progress_is_live_on_a_terminal(tmp_path: Path, make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(render_seconds=0.5)
    env = cli_env(TERM="xterm-256color", COLUMNS="100", MAGIC_HOUR_API_KEY=sandbox.key)
    env.pop("NO_COLOR", None)
    job = write_job(tmp_path, prompts(6), name="live")
    code, screen = on_a_terminal(
        "run", str(job), "--base-url", sandbox.base_url, cwd=tmp_path, env=env
    )
    assert code == 0, screen
    assert ANSI in screen  # colours and cursor moves: a live display
    assert "━" in screen  # the progress bar
    assert "0/6" in screen  # items done out of the run's
    assert "6 done" in screen  # its last refresh
    assert "batch live" in screen  # then the summary
    assert "Traceback" not in screen


def test_progress_off_a_terminal_has_no_escape_codes(
    tmp_path: Path, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox(render_seconds=0.5)
    job = write_job(tmp_path, prompts(6), name="plain")
    env = cli_env(TERM="xterm-256color", MAGIC_HOUR_API_KEY=sandbox.key)
    done = batcher("run", str(job), "--base-url", sandbox.base_url, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert ANSI not in done.stderr and ANSI not in done.stdout
    assert "━" not in done.stderr
    assert "batch plain" in done.stdout  # the summary is a result: stdout
    assert "complete" in done.stdout


# --------------------------------------------------------------------------- exit codes


def test_exit_1_when_items_fail_with_a_hint_that_works(
    tmp_path: Path, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox(render_error_rate=1.0)
    job = write_job(tmp_path, prompts(3), name="failing")
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = cli_env(MAGIC_HOUR_API_KEY=sandbox.key, BATCHER_RETRY_INSTANT="1")
    common = ("--base-url", sandbox.base_url, "--db", db, "--out", str(tmp_path / "out"))
    done = batcher("run", str(job), "--render-retries", "0", *common, cwd=tmp_path, env=env)
    assert done.returncode == 1, done.stderr
    assert _states(db) == {"failed": 3}
    hint = f"`batcher items failing --state failed --db {db}` shows why"
    assert hint in done.stderr
    shown = batcher("items", "failing", "--state", "failed", "--db", db, cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("the render failed and was refunded") == 3


def test_exit_2_for_a_key_the_api_rejects_with_nothing_sent(
    tmp_path: Path, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox()
    job = write_job(tmp_path, prompts(3), name="badkey")
    env = cli_env(MAGIC_HOUR_API_KEY="not-the-key")
    done = batcher(
        "run", str(job), "--base-url", sandbox.base_url, "--db", f"sqlite:///{tmp_path / 'l.db'}",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") <= 3 and "Traceback" not in done.stderr
    assert "not-the-key" not in done.stderr
    assert sandbox.journal() == []


def test_exit_2_for_a_bad_job_file(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("name: x\nprompts: []\n")
    done = batcher("run", str(job), "--sandbox", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.rstrip().splitlines()[-1] == (
        "error: 1 problem in 1 of 1 job file; nothing was sent"
    )
    assert not (tmp_path / "batcher.db").exists(), "nothing written for bad input"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 143)]
)
def test_a_signal_mid_run_stops_cleanly_and_resume_pays_nothing_twice(
    tmp_path: Path, make_sandbox: MakeSandbox, signum: signal.Signals, code: int
) -> None:
    sandbox = make_sandbox(render_seconds=0.5, latency=0.05)
    job = write_job(tmp_path, prompts(40), name="stopped")
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = cli_env(MAGIC_HOUR_API_KEY=sandbox.key, BATCHER_RETRY_INSTANT="1")
    common = ["--base-url", sandbox.base_url, "--db", db, "--out", str(tmp_path / "out")]
    process = subprocess.Popen(
        batcher_command("run", str(job), "--concurrency", "4", "--json", *common),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + DEADLINE_S
    while len(sandbox.journal()) < 5:
        assert time.monotonic() < deadline, "no create went out"
        time.sleep(0.01)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert json.loads(stdout)["exit_code"] == code  # --json says so too
    assert f"{signum.name}: stopping" in stderr
    assert f"batcher resume stopped --db {db}" in stderr
    assert "Traceback" not in stderr
    states = _states(db)
    assert not states.get("sending") and not states.get("unconfirmed"), states
    assert states.get("pending"), "it stopped sending when asked"
    final = batcher("resume", "stopped", *common, cwd=tmp_path, env=env)
    assert final.returncode == 0, final.stderr
    assert _states(db) == {"complete": 40}
    names = [entry.name for entry in sandbox.journal()]
    assert len(names) == len(set(names)) == 40, "each prompt created exactly once"


# --------------------------------------------------------------------------- refusals


def _journal_untouched(sandbox: SandboxHandle) -> None:
    assert sandbox.journal() == []
    assert sandbox.stats().count("POST /v1/ai-image-generator", 200) == 0


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_out_folder_that_cannot_be_one_is_refused_before_sending(
    tmp_path: Path, make_sandbox: MakeSandbox, where: str
) -> None:
    sandbox = make_sandbox()
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    out = blocker if where == "a file" else blocker / "images"
    job = write_job(tmp_path, prompts(2), name="outs")
    db = tmp_path / "ledger.db"
    done = batcher(
        "run", str(job), "--out", str(out), "--base-url", sandbox.base_url,
        "--db", f"sqlite:///{db}", cwd=tmp_path, env=cli_env(MAGIC_HOUR_API_KEY=sandbox.key),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ") and str(out) in line, line
    _journal_untouched(sandbox)
    assert not db.exists(), "refused before the ledger was touched"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_out_folder_is_refused_before_sending(
    tmp_path: Path, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox()
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o500)
    job = write_job(tmp_path, prompts(2), name="locked")
    try:
        done = batcher(
            "run", str(job), "--out", str(out), "--base-url", sandbox.base_url,
            "--db", f"sqlite:///{tmp_path / 'l.db'}", cwd=tmp_path,
            env=cli_env(MAGIC_HOUR_API_KEY=sandbox.key),
        )  # fmt: skip
    finally:
        out.chmod(0o700)
    assert done.returncode == 2, done.stderr
    assert "is not writable" in done.stderr and str(out) in done.stderr
    _journal_untouched(sandbox)


def test_resume_of_a_missing_ledger_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    done = batcher("resume", "any", "--sandbox", "--db", f"sqlite:///{missing}", cwd=tmp_path)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line == (
        f"error: no ledger at {missing} (nothing has run with this --db / BATCHER_DATABASE_URL yet)"
    )
    assert not missing.exists()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("nosuchdb://host/x", "unknown database 'nosuchdb'"),
        ("not a url at all", "is not a database URL"),
    ],
)
def test_a_bad_db_url_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, says: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for args in (("run", str(DEMO), "--sandbox"), ("status",), ("db", "upgrade")):
        done = CliRunner().invoke(main, [*args, "--db", url], env={"BATCHER_DATABASE_URL": ""})
        assert done.exit_code == 2, (args, done.output)
        assert "Traceback" not in done.stderr
        [line] = [line for line in done.stderr.splitlines() if not line.startswith("sandbox: ")]
        assert line.startswith("error: ") and says in line, (args, line)


def test_a_worker_for_an_unknown_batch_is_refused(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert batcher("db", "upgrade", "--db", db, cwd=tmp_path).returncode == 0
    done = batcher("worker", "ghost", "--db", db, cwd=tmp_path, env=cli_env(MAGIC_HOUR_API_KEY="k"))
    assert done.returncode == 2
    assert "no batch named 'ghost' in the ledger; the ledger is empty" in done.stderr
