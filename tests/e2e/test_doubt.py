"""Creates whose outcome is unknown, through the real CLI against the sandbox:

- the breaker (`--doubt-limit`, default 3): creates that come back in doubt
  (dropped after charging, not JSON, no id, 204, a drip past the deadline)
  stop the sending after three in a row; what was in flight settles; exit 1
  with the reason, no traceback, and only a handful paid blind;
- the create deadline (`--create-timeout`): a server that drips one byte now
  and then cannot hold a create longer than that;
- the first signal's grace (`--grace`): creates that never answer are cut
  short after it, recorded in doubt, and the run exits 143;
- a key revoked mid-run: sending stops, what is in flight settles, exit 2
  with one line naming MAGIC_HOUR_API_KEY; `resume` with the key back
  finishes, paying nothing twice.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import batcher_command, check_against_journal, cli_env, prompts, write_job

from batcher.ledger import Ledger
from batcher.sandbox import SandboxHandle

MakeSandbox = Callable[..., SandboxHandle]
ITEMS = 20
CONCURRENCY = 2


def _db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def _args(tmp_path: Path, command: str, target: str, sandbox: SandboxHandle) -> list[str]:
    return batcher_command(
        command, target, "--base-url", sandbox.base_url, "--db", _db(tmp_path),
        "--out", str(tmp_path / "out"), "--concurrency", str(CONCURRENCY), "--no-preflight",
    )  # fmt: skip


def _run(
    tmp_path: Path, sandbox: SandboxHandle, *flags: str, command: str = "run"
) -> subprocess.CompletedProcess[str]:
    target = "doubt" if command == "resume" else str(_job(tmp_path))
    return subprocess.run(
        [*_args(tmp_path, command, target, sandbox), *flags],
        env=cli_env(MAGIC_HOUR_API_KEY=sandbox.key, BATCHER_RETRY_INSTANT="1"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _job(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    return path if path.exists() else write_job(tmp_path, prompts(ITEMS), name="doubt")


def _states(tmp_path: Path) -> dict[str, int]:
    with Ledger.open(_db(tmp_path)) as ledger:
        return {state: n for state, n in ledger.state_counts(1).items() if n}


def _clean(stderr: str) -> None:
    assert "Traceback" not in stderr and "ExceptionGroup" not in stderr, stderr


@pytest.mark.parametrize(
    "fault",
    [
        {"drop_rate": 1.0},
        {"create_garble": "non-json"},
        {"create_garble": "no-id"},
        {"create_garble": "status-204"},
        {"create_garble": "slow-drip", "drip_seconds": 0.5},
    ],
    ids=["dropped", "non-json", "no-id", "204", "slow-drip"],
)
def test_the_breaker_stops_sending_after_three_creates_in_doubt(
    tmp_path: Path, make_sandbox: MakeSandbox, fault: dict[str, Any]
) -> None:
    sandbox = make_sandbox(**fault)
    started = time.monotonic()
    done = _run(tmp_path, sandbox, "--create-timeout", "1")
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    _clean(done.stderr)
    [stop] = [line for line in done.stderr.splitlines() if "sending stopped:" in line]
    assert "creates in a row came back in doubt" in stop and "--doubt-limit 3" in stop, stop
    paid_blind = len(sandbox.journal())
    # Three in a row trip it; those already in flight then settle, nothing new goes.
    assert 3 <= paid_blind <= 3 + CONCURRENCY, paid_blind
    assert _states(tmp_path) == {"unconfirmed": paid_blind, "pending": ITEMS - paid_blind}
    assert f"{ITEMS - paid_blind} item(s) left unsent" in stop, stop
    check_against_journal(_db(tmp_path), [e.as_dict() for e in sandbox.journal()])
    if "drip_seconds" in fault:
        # Without the deadline a create would take half a second per byte of its answer.
        assert elapsed < 20, elapsed
        assert "within its 1 s deadline (--create-timeout)" in done.stderr


def test_a_higher_doubt_limit_lets_more_through(tmp_path: Path, make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(create_garble="non-json")
    done = _run(tmp_path, sandbox, "--doubt-limit", "8")
    assert done.returncode == 1, done.stderr
    assert 8 <= len(sandbox.journal()) <= 8 + CONCURRENCY
    assert "--doubt-limit 8" in done.stderr


def test_a_create_that_never_answers_is_cut_after_the_grace(
    tmp_path: Path, make_sandbox: MakeSandbox
) -> None:
    # One byte every 5 s: the creates hold out far beyond the test's patience.
    sandbox = make_sandbox(create_garble="slow-drip", drip_seconds=5.0)
    process = subprocess.Popen(
        [*_args(tmp_path, "run", str(_job(tmp_path)), sandbox), "--grace", "1"],
        env=cli_env(MAGIC_HOUR_API_KEY=sandbox.key, BATCHER_RETRY_INSTANT="1"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(sandbox.journal()) < CONCURRENCY:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=60)
    waited = time.monotonic() - signalled
    assert process.returncode == 143, err
    _clean(err)
    assert 1.0 <= waited < 10, waited
    assert "grace of 1 s over" in err, err
    in_doubt = len(sandbox.journal())
    assert _states(tmp_path) == {"unconfirmed": in_doubt, "pending": ITEMS - in_doubt}
    check_against_journal(_db(tmp_path), [e.as_dict() for e in sandbox.journal()])


@pytest.mark.slow
def test_a_key_revoked_mid_run_exits_2_naming_the_variable(
    tmp_path: Path, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox(latency=0.02, render_seconds=0.2)
    process = subprocess.Popen(
        [*_args(tmp_path, "run", str(_job(tmp_path)), sandbox), "--rate", "10"],
        env=cli_env(MAGIC_HOUR_API_KEY=sandbox.key, BATCHER_RETRY_INSTANT="1"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(sandbox.journal()) < 5:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sandbox.set_faults(key_revoked=True)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 2, err
    _clean(err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "MAGIC_HOUR_API_KEY" in errors[0], err
    assert sandbox.key not in err
    states = _states(tmp_path)
    assert "sending" not in states and "unconfirmed" not in states, states
    assert states.get("pending", 0) > 0, states
    check_against_journal(_db(tmp_path), [e.as_dict() for e in sandbox.journal()])

    sandbox.set_faults(key_revoked=False)
    final = _run(tmp_path, sandbox, command="resume")
    assert final.returncode == 0, final.stderr
    states = check_against_journal(_db(tmp_path), [e.as_dict() for e in sandbox.journal()])
    assert states["complete"] == ITEMS
    names = [entry.name for entry in sandbox.journal()]
    assert len(names) == len(set(names)) == ITEMS, "nothing was paid twice"
