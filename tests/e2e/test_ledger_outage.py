"""The ledger away mid-run, through the real CLI (issue 11, point 1).

While the ledger cannot take a commit no create is sent and every answer that
arrives waits in memory; if the ledger comes back within --ledger-hold the run
carries on, else the answers go to the rescue file and the run exits 1 in one
line. The next command that opens the ledger applies the file and says so;
a final `resume` then completes the batch with nothing paid twice and nothing
needing --resend-unconfirmed.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from e2e_support import batcher_command, check_against_journal, cli_env, prompts, write_job
from tcp_proxy import TcpProxy

from batcher.ledger import Ledger

PROMPTS = 60

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@contextmanager
def write_locked(path: Path) -> Iterator[Callable[[], None]]:
    """Another process holds the ledger's write lock until the block ends (or the
    function it gives is called)."""
    process = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            assert process.stdin is not None
            process.stdin.write("\n")
            process.stdin.close()
            assert process.wait(timeout=30) == 0

    try:
        assert process.stdout.readline().strip() == "locked"
        yield release
    finally:
        release()
        process.stdout.close()


def start_run(
    tmp_path: Path, sandbox: Any, db: str, *flags: str, count: int = PROMPTS
) -> subprocess.Popen[str]:
    """`batcher run` of a job of `count` prompts, at concurrency 2 unless `flags` say."""
    job = write_job(tmp_path, prompts(count), name="night")
    return subprocess.Popen(
        batcher_command(
            "run",
            str(job),
            "--base-url",
            sandbox.base_url,
            "--db",
            db,
            "--out",
            str(tmp_path / "out"),
            "--concurrency",
            "2",
            *flags,
        ),
        env=cli_env(MAGIC_HOUR_API_KEY="sandbox-key", BATCHER_RETRY_INSTANT="1"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_creates(sandbox: Any, count: int, process: subprocess.Popen[str]) -> int:
    """Block until the server has seen `count` creates (the run is mid-send)."""
    deadline = time.monotonic() + 60
    while (seen := len(sandbox.journal())) < count:
        assert process.poll() is None, "the run ended before the fault"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return seen


def cli(tmp_path: Path, sandbox: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        batcher_command(*args, "--base-url", sandbox.base_url)
        if args[0] == "resume"
        else batcher_command(*args),
        env=cli_env(MAGIC_HOUR_API_KEY="sandbox-key", BATCHER_RETRY_INSTANT="1"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr and "ExceptionGroup" not in stderr, stderr


def finish_and_check(tmp_path: Path, sandbox: Any, db: str, count: int = PROMPTS) -> None:
    """`resume` completes the batch; every prompt created exactly once, no doubt."""
    final = cli(tmp_path, sandbox, "resume", "night", "--db", db, "--out", str(tmp_path / "out"))
    assert final.returncode == 0, final.stderr
    no_traceback(final.stderr)
    journal = sandbox.journal()
    states = check_against_journal(db, journal)
    assert states.get("complete") == count, states
    assert len(journal) == count, "a prompt was paid twice"


@pytest.mark.slow
def test_a_lock_shorter_than_the_hold_is_ridden_out(tmp_path: Path, external_sandbox: Any) -> None:
    sandbox = external_sandbox("--render-seconds", "0.3", "--latency", "0.05")
    path = tmp_path / "ledger.db"
    db = f"sqlite:///{path}?timeout=0.2"
    run = start_run(tmp_path, sandbox, db, "--ledger-hold", "30")
    wait_for_creates(sandbox, 10, run)
    with write_locked(path):
        time.sleep(0.5)  # past the busy timeout: the writer holds and retries
        during = len(sandbox.journal())
        time.sleep(1.0)
        assert len(sandbox.journal()) <= during + 2, "creates went on while the ledger was away"
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr
    no_traceback(stderr)
    assert "no new creates until it answers" in stderr, stderr
    assert "answers again after" in stderr, stderr
    journal = sandbox.journal()
    states = check_against_journal(db, journal)
    assert states.get("complete") == PROMPTS and len(journal) == PROMPTS, states


@pytest.mark.slow
def test_a_lock_past_the_hold_saves_the_answers_and_the_next_command_applies_them(
    tmp_path: Path, external_sandbox: Any
) -> None:
    sandbox = external_sandbox("--render-seconds", "0.3", "--latency", "0.05")
    path = tmp_path / "ledger.db"
    db = f"sqlite:///{path}?timeout=0.2"
    run = start_run(tmp_path, sandbox, db, "--ledger-hold", "1")
    wait_for_creates(sandbox, 10, run)
    with write_locked(path):
        _, stderr = run.communicate(timeout=120)
    assert run.returncode == 1, stderr
    no_traceback(stderr)
    rescue = tmp_path / "ledger.db.rescue.jsonl"
    errors = [
        line
        for line in stderr.splitlines()
        if line.startswith("error:") and "unavailable for 1 s" in line
    ]
    assert len(errors) == 1 and str(rescue) in errors[0], stderr
    assert rescue.is_file() and rescue.read_text().strip(), "answers saved"
    # Answers in the rescue file, not yet in the ledger: in it, those sends look half done.
    with Ledger.open(f"sqlite:///{path}", upgrade=False) as ledger:
        assert ledger.state_counts(1)["sending"] > 0

    status = cli(tmp_path, sandbox, "status", "--db", db)
    assert status.returncode == 0, status.stderr
    assert f"applied the rescue file {rescue} first" in status.stderr, status.stderr
    assert not rescue.exists() and (tmp_path / "ledger.db.rescue.jsonl.applied").exists()
    with Ledger.open(f"sqlite:///{path}") as ledger:
        counts = ledger.state_counts(1)
    assert counts["sending"] == counts["unconfirmed"] == 0, counts
    check_against_journal(db, sandbox.journal(), settled=False)
    finish_and_check(tmp_path, sandbox, db)


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def proxied_postgres(postgres_database: str) -> Iterator[tuple[str, TcpProxy]]:
    """The test database through a proxy the test cuts (a server restart, a stop)."""
    proxy = TcpProxy("127.0.0.1", 5432)
    try:
        yield postgres_database.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), proxy
    finally:
        proxy.close()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize(("concurrency", "count"), [(8, 120), (64, 400)])
def test_a_postgresql_restart_is_ridden_out(
    tmp_path: Path,
    external_sandbox: Any,
    proxied_postgres: tuple[str, TcpProxy],
    concurrency: int,
    count: int,
) -> None:
    db, proxy = proxied_postgres
    sandbox = external_sandbox("--render-seconds", "0.3", "--latency", "0.05")
    flags = ["--ledger-hold", "30", "--concurrency", str(concurrency)]
    run = start_run(tmp_path, sandbox, db, *flags, count=count)
    wait_for_creates(sandbox, 10, run)
    proxy.cut(abrupt=True)
    time.sleep(0.5)
    during = len(sandbox.journal())
    time.sleep(2.0)
    assert len(sandbox.journal()) <= during + 2, "creates went on while the ledger was away"
    proxy.restore()
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr
    no_traceback(stderr)
    assert "answers again after" in stderr, stderr
    journal = sandbox.journal()
    states = check_against_journal(db, journal)
    assert states.get("complete") == count and len(journal) == count, states


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize(("concurrency", "count"), [(2, PROMPTS), (64, 400)])
def test_a_postgresql_stop_past_the_hold_saves_the_answers_in_the_current_folder(
    tmp_path: Path,
    external_sandbox: Any,
    proxied_postgres: tuple[str, TcpProxy],
    concurrency: int,
    count: int,
) -> None:
    db, proxy = proxied_postgres
    sandbox = external_sandbox("--render-seconds", "0.3", "--latency", "0.05")
    flags = ["--ledger-hold", "1.5", "--concurrency", str(concurrency)]
    run = start_run(tmp_path, sandbox, db, *flags, count=count)
    wait_for_creates(sandbox, 10, run)
    proxy.cut(abrupt=True)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 1, stderr
    no_traceback(stderr)
    name = db.rsplit("/", 1)[1]
    rescue = tmp_path / f"batcher-rescue-{name}.jsonl"
    errors = [
        line
        for line in stderr.splitlines()
        if line.startswith("error:") and "unavailable for 1.5 s" in line
    ]
    assert len(errors) == 1 and str(rescue) in errors[0], stderr
    assert rescue.read_text().strip()
    proxy.restore()
    status = cli(tmp_path, sandbox, "status", "--db", db)
    assert status.returncode == 0, status.stderr
    assert f"applied the rescue file {rescue} first" in status.stderr, status.stderr
    finish_and_check(tmp_path, sandbox, db, count)


# --------------------------------------------------------------------------- full disk


def _unshare() -> str:
    """A user and mount namespace where a test may mount a tmpfs (root or not)."""
    path = shutil.which("unshare")
    if path is None:
        pytest.skip("no unshare(1) here")
    probe = subprocess.run(
        [path, "--user", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")
    return path


# In the namespace: a tmpfs over the ledger's folder; the ledger made; the disk
# filled but for FREE KiB; the run; then the ledger copied out (the tmpfs dies
# with the namespace) so the test can put it back at the same path.
FULL_DISK = """
set -u
folder=$1; keep=$2; free=$3; shift 3
mount -t tmpfs -o size=4m tmpfs "$folder" || exit 99
"$@" db upgrade --db "sqlite:///$folder/ledger.db" >/dev/null || exit 98
dd if=/dev/zero of="$folder/filler" bs=64k 2>/dev/null
truncate -s "-${free}K" "$folder/filler"
"$@" run "$JOB" --db "sqlite:///$folder/ledger.db" $RUN_FLAGS
code=$?
rm -f "$folder/filler"
mkdir -p "$keep" && cp -a "$folder"/. "$keep"/
exit $code
"""


@pytest.mark.slow
def test_a_full_disk_under_the_ledger_saves_the_answers_elsewhere(
    tmp_path: Path, external_sandbox: Any
) -> None:
    unshare = _unshare()
    sandbox = external_sandbox("--render-seconds", "0.3", "--latency", "0.05")
    job = write_job(tmp_path, prompts(PROMPTS), name="night")
    folder, keep = tmp_path / "ledger", tmp_path / "keep"
    folder.mkdir()
    flags = f"--base-url {sandbox.base_url} --out {tmp_path / 'out'} --concurrency 2"
    run = subprocess.run(
        [
            unshare,
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            FULL_DISK,
            "sh",
            str(folder),
            str(keep),
            "160",
            *batcher_command(),
        ],
        env={
            **cli_env(MAGIC_HOUR_API_KEY="sandbox-key", BATCHER_RETRY_INSTANT="1"),
            "JOB": str(job),
            "RUN_FLAGS": f"{flags} --ledger-hold 1",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 1, run.stderr
    no_traceback(run.stderr)
    assert 0 < len(sandbox.journal()) < PROMPTS, "the disk filled mid-run"
    rescue = tmp_path / "batcher-rescue-ledger.db.jsonl"  # beside the ledger: no room
    [line] = [
        line
        for line in run.stderr.splitlines()
        if line.startswith("error:") and "unavailable for 1 s" in line
    ]
    assert "the disk is full" in line and str(rescue) in line, run.stderr
    for name in ("ledger.db", "ledger.db-wal"):
        shutil.copy2(keep / name, folder / name)

    db = f"sqlite:///{folder / 'ledger.db'}"
    status = cli(tmp_path, sandbox, "status", "--db", db)
    assert status.returncode == 0, status.stderr
    assert f"applied the rescue file {rescue} first" in status.stderr, status.stderr
    with Ledger.open(db) as ledger:
        assert ledger.state_counts(1)["sending"] == 0
    finish_and_check(tmp_path, sandbox, db)


@pytest.mark.slow
def test_sigterm_while_the_ledger_is_away_saves_the_answers_without_waiting(
    tmp_path: Path, external_sandbox: Any
) -> None:
    sandbox = external_sandbox("--render-seconds", "0.3", "--latency", "0.05")
    path = tmp_path / "ledger.db"
    db = f"sqlite:///{path}?timeout=0.2"
    run = start_run(tmp_path, sandbox, db)  # the default hold: 300 s
    wait_for_creates(sandbox, 10, run)
    with write_locked(path):
        time.sleep(1.0)  # the run is holding
        stopped = time.monotonic()
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=60)
        took = time.monotonic() - stopped
    assert took < 15, f"took {took:.1f} s to stop"
    assert run.returncode == 1, stderr
    no_traceback(stderr)
    [line] = [line for line in stderr.splitlines() if "when the run was interrupted" in line]
    assert str(tmp_path / "ledger.db.rescue.jsonl") in line, stderr
    finish_and_check(tmp_path, sandbox, db)
