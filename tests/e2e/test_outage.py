"""API outages, through the real CLI, with a TCP proxy the test cuts and restores
in front of the sandbox (tests/e2e/tcp_proxy.py).

- An outage of 2 s, and one of 15 s, mid-run: sending pauses, the API is probed
  with backoff, sending resumes when it answers; nothing is lost, every item
  completes, no prompt is paid twice.
- An outage past `--outage-tolerance`: sending stops, the run exits 1 with the
  unsent count and no traceback; renders already created stay `submitted`
  with their project ids, and `resume` finishes the batch paying nothing twice.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from e2e_support import batcher_command, check_against_journal, cli_env, prompts, write_job
from tcp_proxy import TcpProxy

from batcher.client import retry
from batcher.ledger import Ledger
from batcher.sandbox import SandboxHandle

MakeSandbox = Callable[..., SandboxHandle]
ITEMS = 40


@pytest.fixture
def proxied(make_sandbox: MakeSandbox) -> Iterator[tuple[SandboxHandle, TcpProxy]]:
    sandbox = make_sandbox(render_seconds=0.3, latency=0.01)
    target = urlsplit(sandbox.base_url)
    assert target.hostname is not None and target.port is not None
    proxy = TcpProxy(target.hostname, target.port)
    yield sandbox, proxy
    proxy.close()


def _start(tmp_path: Path, proxy: TcpProxy, *flags: str) -> subprocess.Popen[str]:
    job = write_job(tmp_path, prompts(ITEMS), name="night")
    return subprocess.Popen(
        batcher_command(
            "run", str(job), "--base-url", proxy.base_url, "--db", _db(tmp_path),
            "--out", str(tmp_path / "out"), "--concurrency", "4", "--rate", "10",
            "--no-preflight", *flags,
        ),
        env=cli_env(MAGIC_HOUR_API_KEY="sandbox-key"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def _await_created(sandbox: SandboxHandle, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(sandbox.journal()) < count:
        assert time.monotonic() < deadline, f"fewer than {count} creates in {timeout} s"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("seconds", [2.0, 15.0])
def test_an_outage_is_ridden_out(
    tmp_path: Path, proxied: tuple[SandboxHandle, TcpProxy], seconds: float
) -> None:
    sandbox, proxy = proxied
    run = _start(tmp_path, proxy)
    _await_created(sandbox, 10)
    proxy.cut()
    # Creates on the wire at the cut still get their answers: let them land.
    time.sleep(0.5)
    cut_at = len(sandbox.journal())
    time.sleep(seconds - 0.5)
    assert len(sandbox.journal()) == cut_at, "nothing reached the API during the outage"
    proxy.restore()
    restored = time.monotonic()
    _await_created(sandbox, cut_at + 1)
    # Probes are at most PROBE_MAX (15 s) apart: sending resumes soon after.
    assert time.monotonic() - restored < retry.PROBE_MAX + 2
    _out, err = run.communicate(timeout=90)
    assert run.returncode == 0, err
    assert "Traceback" not in err and "ExceptionGroup" not in err, err
    assert "sending paused" in err and "answers again" in err, err
    states = check_against_journal(_db(tmp_path), [e.as_dict() for e in sandbox.journal()])
    assert states["complete"] == ITEMS, states
    names = [entry.name for entry in sandbox.journal()]
    assert len(names) == len(set(names)) == ITEMS, "each prompt created exactly once"
    assert len(list((tmp_path / "out").glob("*.png"))) == ITEMS


@pytest.mark.slow
def test_an_outage_past_the_tolerance_stops_sending_and_resume_finishes(
    tmp_path: Path, proxied: tuple[SandboxHandle, TcpProxy]
) -> None:
    sandbox, proxy = proxied
    run = _start(tmp_path, proxy, "--outage-tolerance", "1.5")
    _await_created(sandbox, 10)
    proxy.cut()
    _out, err = run.communicate(timeout=90)
    assert run.returncode == 1, err
    assert "Traceback" not in err and "ExceptionGroup" not in err, err
    [stop] = [line for line in err.splitlines() if "sending stopped:" in line]
    assert "unreachable" in stop and "--outage-tolerance 1.5" in stop, stop
    with Ledger.open(_db(tmp_path)) as ledger:
        states = ledger.state_counts(1)
        submitted = [i for i in ledger.items(1) if i.state == "submitted"]
    sent = len(sandbox.journal())
    assert f"{ITEMS - sent} item(s) left unsent" in stop, (stop, states)
    assert states["pending"] == ITEMS - sent > 0, states
    assert states["unconfirmed"] == states["failed"] == states["sending"] == 0, states
    assert all(item.project_id for item in submitted)
    check_against_journal(_db(tmp_path), [e.as_dict() for e in sandbox.journal()])

    proxy.restore()
    final = subprocess.run(
        batcher_command(
            "resume", "night", "--base-url", proxy.base_url, "--db", _db(tmp_path),
            "--out", str(tmp_path / "out"), "--no-preflight",
        ),
        env=cli_env(MAGIC_HOUR_API_KEY="sandbox-key"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )  # fmt: skip
    assert final.returncode == 0, final.stderr
    states = check_against_journal(_db(tmp_path), [e.as_dict() for e in sandbox.journal()])
    assert states["complete"] == ITEMS
    names = [entry.name for entry in sandbox.journal()]
    assert len(names) == len(set(names)) == ITEMS, "nothing was paid twice"
