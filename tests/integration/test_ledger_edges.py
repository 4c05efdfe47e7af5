"""The ledger's edge: every way a `--db` can be unusable ends in one line that
names the file or the URL, the documented exit code, nothing sent and nothing
already recorded lost. Real files throughout: garbage bytes, a truncated copy,
read-only files and folders, a lock held by another process.

The commands run in-process through the real CLI (click's runner) against a
dedicated sandbox, whose journal proves that no create went out.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from batcher.cli import main
from batcher.errors import (
    EXIT_FAILURE,
    EXIT_INPUT,
    ConfigError,
    LedgerBusyError,
    LedgerCorruptError,
    LedgerReadOnlyError,
)
from batcher.jobfile.items import ItemSettings, JobItem
from batcher.ledger import Ledger
from batcher.sandbox import SandboxHandle

MakeSandbox = Callable[..., SandboxHandle]
SETTINGS = ItemSettings("z-image-turbo", None, "1:1", "general", 1)


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAGIC_HOUR_API_KEY", "MAGIC_HOUR_BASE_URL", "BATCHER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def api(make_sandbox: MakeSandbox) -> SandboxHandle:
    """A sandbox of this test's own: an empty journal means nothing was sent."""
    return make_sandbox()


def cli(*args: str, api: SandboxHandle | None = None) -> Result:
    env = {"MAGIC_HOUR_API_KEY": api.key} if api else None
    extra = ["--base-url", api.base_url] if api else []
    return CliRunner().invoke(main, [*args, *extra], env=env)


def run(tmp_path: Path, db: str, api: SandboxHandle) -> Result:
    job = tmp_path / "job.yaml"
    job.write_text(
        textwrap.dedent(
            """\
            name: edges
            defaults: {model: z-image-turbo, resolution: 640px}
            prompts: ["a red bicycle", "a blue boat"]
            """
        )
    )
    return cli("run", str(job), "--db", db, "--out", str(tmp_path / "out"), api=api)


def one_error_line(result: Result) -> str:
    """The command's output: exactly one line, an error, no traceback."""
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), result.output
    return lines[0]


def make_ledger(path: Path, items: int = 3000) -> None:
    """A real ledger with enough rows to span many pages."""
    with Ledger.open(f"sqlite:///{path}") as ledger:
        batch, _ = ledger.open_batch(
            "kept", job_path="job.yaml", job_hash="h", budget=None, settings={}
        )
        ledger.sync_items(
            batch.id,
            [
                JobItem(n, f"k{n}", f"prompt {n} " * 10, SETTINGS, "job.yaml", n + 1)
                for n in range(items)
            ],
            estimate=lambda _s: (5, True),
            project_name=lambda item: item.key,
        )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make a file or a folder unwritable. As root, where permissions do not bite,
    with the immutable flag (chattr +i); skip if neither works here."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        undo = [lambda: path.chmod(mode)]
    else:
        chattr = shutil.which("chattr")
        done = chattr and subprocess.run([chattr, "+i", str(path)], capture_output=True)
        if not chattr or not done or done.returncode != 0:
            pytest.skip("running as root, and no immutable flag here: permissions do not bite")
        undo = [lambda: subprocess.run([str(chattr), "-i", str(path)], check=True)]
    try:
        if os.access(path, os.W_OK):
            pytest.skip(f"{path} is still writable here")
        yield
    finally:
        for step in undo:
            step()


# --------------------------------------------------------------------------- corrupt


def test_a_file_of_garbage_bytes_is_refused_and_left_alone(
    tmp_path: Path, api: SandboxHandle
) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(os.urandom(64 * 1024))
    before = digest(path)
    with pytest.raises(LedgerCorruptError) as caught:
        Ledger.open(f"sqlite:///{path}")
    assert caught.value.exit_code == EXIT_INPUT
    for result in (
        run(tmp_path, f"sqlite:///{path}", api),
        cli("status", "--db", f"sqlite:///{path}"),
        cli("db", "upgrade", "--db", f"sqlite:///{path}"),
    ):
        assert result.exit_code == EXIT_INPUT, result.output
        line = one_error_line(result)
        assert str(path) in line and "damaged or not a batcher ledger" in line
    assert api.journal() == []
    assert digest(path) == before


@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_a_ledger_truncated_mid_page_is_refused_and_left_alone(
    tmp_path: Path, api: SandboxHandle, keep: float
) -> None:
    whole = tmp_path / "whole.db"
    make_ledger(whole)
    path = tmp_path / "ledger.db"
    data = whole.read_bytes()
    cut = int(len(data) * keep) // 4096 * 4096 + 1234  # mid-page
    path.write_bytes(data[:cut])
    before = digest(path)
    result = run(tmp_path, f"sqlite:///{path}", api)
    assert result.exit_code == EXIT_INPUT, result.output
    assert str(path) in one_error_line(result)
    result = cli("status", "--db", f"sqlite:///{path}")
    assert result.exit_code == EXIT_INPUT, result.output
    assert "malformed" in one_error_line(result)
    assert api.journal() == []
    assert digest(path) == before


def test_garbage_over_the_items_pages_is_found_when_they_are_read(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    make_ledger(path)
    with path.open("r+b") as file:
        file.seek(100 * 4096)
        file.write(os.urandom(3 * 4096))
    before = digest(path)
    result = cli("status", "--db", f"sqlite:///{path}")
    assert result.exit_code == EXIT_INPUT, result.output
    assert "malformed" in one_error_line(result)
    assert digest(path) == before


# --------------------------------------------------------------------------- read-only


def test_a_read_only_ledger_file_is_read_but_never_written(
    tmp_path: Path, api: SandboxHandle
) -> None:
    path = tmp_path / "ledger.db"
    make_ledger(path, items=10)
    before = digest(path)
    url = f"sqlite:///{path}"
    with read_only(path):
        status = cli("status", "--db", url, "--json")
        assert status.exit_code == 0, status.output
        assert '"items": 10' in status.output
        with Ledger.open(url) as ledger, pytest.raises(LedgerReadOnlyError) as caught:
            ledger.set_budget(1, 5)
        assert caught.value.exit_code == EXIT_INPUT
        result = run(tmp_path, url, api)
        assert result.exit_code == EXIT_INPUT, result.output
        line = one_error_line(result)
        assert str(path) in line and "read-only (the file is not writable)" in line
    assert api.journal() == []
    assert digest(path) == before


def test_a_ledger_in_a_read_only_folder_is_refused_and_left_alone(
    tmp_path: Path, api: SandboxHandle
) -> None:
    folder = tmp_path / "ledgers"
    folder.mkdir()
    path = folder / "ledger.db"
    make_ledger(path, items=10)  # closed cleanly: no -wal or -shm file is left
    before = digest(path)
    with read_only(folder):
        for result in (
            run(tmp_path, f"sqlite:///{path}", api),
            cli("status", "--db", f"sqlite:///{path}"),
        ):
            assert result.exit_code == EXIT_INPUT, result.output
            line = one_error_line(result)
            assert f"its folder {folder} is not writable" in line
        # A new ledger in a read-only folder cannot be created either.
        result = run(tmp_path, f"sqlite:///{folder / 'new.db'}", api)
        assert result.exit_code == EXIT_INPUT, result.output
        assert "not writable" in one_error_line(result)
    assert api.journal() == []
    assert digest(path) == before
    assert sorted(p.name for p in folder.iterdir()) == ["ledger.db"]


# --------------------------------------------------------------------------- locked


LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE batches SET budget = 999")  # written, not committed
print("locked", flush=True)
sys.stdin.readline()
conn.execute(sys.stdin.readline().strip() or "ROLLBACK")
"""


@contextmanager
def locked(path: Path, *, then: str = "ROLLBACK") -> Iterator[None]:
    """Another process holds the ledger's write lock (mid-transaction) until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        assert process.stdout.readline().strip() == "locked"
        yield
    finally:
        process.stdin.write(f"\n{then}\n")
        process.stdin.close()
        assert process.wait(timeout=30) == 0
        process.stdout.close()


def test_a_lock_held_past_the_busy_timeout_stops_before_sending(
    tmp_path: Path, api: SandboxHandle
) -> None:
    path = tmp_path / "ledger.db"
    make_ledger(path, items=10)
    with locked(path, then="COMMIT"):
        with (
            Ledger.open(f"sqlite:///{path}", busy_timeout_s=0.2) as ledger,
            pytest.raises(LedgerBusyError) as caught,
        ):
            ledger.set_budget(1, 5)
        assert caught.value.exit_code == EXIT_FAILURE
        result = run(tmp_path, f"sqlite:///{path}?timeout=1", api)
        assert result.exit_code == EXIT_FAILURE, result.output
        line = one_error_line(result)
        assert f"ledger {path} is locked by another process: still busy after 1 s" in line
    assert api.journal() == []
    # Nothing lost: the other process's transaction committed, and the rows are all there.
    with Ledger.open(f"sqlite:///{path}") as ledger:
        [summary] = ledger.batch_summaries()
        assert (summary.items, summary.budget) == (10, 999)


def test_readers_never_wait_on_a_writer(tmp_path: Path) -> None:
    """While another process holds the write lock mid-transaction, every report reads
    at once: with a busy timeout of 0, any wait for the lock would be an error."""
    path = tmp_path / "ledger.db"
    make_ledger(path, items=10)
    url = f"sqlite:///{path}"
    with locked(path):
        with Ledger.open(url, create=False, busy_timeout_s=0) as ledger:
            [summary] = ledger.batch_summaries()
            assert (summary.items, summary.budget) == (10, None)  # the committed snapshot
            assert ledger.state_counts(summary.id)["pending"] == 10
            assert ledger.known_projects(summary.id) == []
            assert ledger.doubtful_items([summary.id]) == []
            assert len(list(ledger.items(summary.id))) == 10
            assert ledger.stale_leases([summary.id]) == {}
            assert ledger.workers() == []
            with pytest.raises(LedgerBusyError):
                ledger.set_budget(summary.id, 1)  # a writer does wait (and here gives up)
        for command in (["status"], ["status", "--json"], ["audit"], ["audit", "--by", "day"]):
            result = cli(*command, "--db", f"{url}?timeout=0")
            assert result.exit_code == 0, result.output
            assert "kept" in result.output or command[0] == "audit"


# --------------------------------------------------------------------------- URLs and folders


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://x", "unknown database 'ftp'"),
        ("mysql://u@h/db", "unknown database 'mysql'"),
        ("sqlite://", "sqlite:// names no file"),
        ("sqlite:///:memory:", "names no file"),
        ("no url at all", "is not a database URL"),
        ("sqlite:///x.db?timeout=soon", "timeout must be a number of seconds"),
    ],
)
def test_a_database_url_batcher_cannot_use_is_bad_configuration(
    tmp_path: Path, api: SandboxHandle, url: str, says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        Ledger.open(url)
    for result in (
        run(tmp_path, url, api),
        cli("status", "--db", url),
        cli("db", "upgrade", "--db", url),
    ):
        assert result.exit_code == EXIT_INPUT, result.output
        assert says in one_error_line(result)
    assert api.journal() == []


def test_a_password_in_the_url_is_never_shown(tmp_path: Path) -> None:
    result = cli("status", "--db", "postgresql+psycopg://me:s3cret-pw@127.0.0.1:1/nothing")
    assert result.exit_code == EXIT_FAILURE, result.output
    line = one_error_line(result)
    assert "s3cret-pw" not in line and "postgresql+psycopg://me:***@127.0.0.1:1/nothing" in line


def test_a_ledger_in_a_folder_that_does_not_exist(tmp_path: Path, api: SandboxHandle) -> None:
    path = tmp_path / "missing" / "ledger.db"
    url = f"sqlite:///{path}"
    for result in (run(tmp_path, url, api), cli("db", "upgrade", "--db", url)):
        assert result.exit_code == EXIT_INPUT, result.output
        assert f"the folder {path.parent} does not exist" in one_error_line(result)
    assert cli("resume", "edges", "--db", url, api=api).exit_code == EXIT_INPUT
    # A report over a ledger that cannot exist yet says so, and shows nothing.
    status = cli("status", "--db", url)
    assert status.exit_code == 0, status.output
    assert "no ledger at" in status.output
    assert api.journal() == []
    assert not path.parent.exists()
