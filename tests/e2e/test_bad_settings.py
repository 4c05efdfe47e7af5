"""Bad settings and hostile surroundings (issue 10, points 13 and 14), through
the real command line against the sandbox: each refused with exit 2 and one
clear line before anything is sent or written; folders, the manifest and the
terminal kept safe from what names and prompts hold.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_support import batcher_command, cli_env, prompts, write_job

from batcher.folders import folder_name
from batcher.sandbox import SandboxHandle

MakeSandbox = Callable[..., SandboxHandle]
DEADLINE_S = 120.0
ESC = "\x1b"


def batcher(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        batcher_command(*args),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--rate", "nan"], "--rate must be a finite number"),
        (["--rate", "inf"], "--rate must be a finite number"),
        (["--budget", "99999999999999999999999"], "--budget 99999999999999999999999 is beyond"),
        (["--db", "sqlite://"], "in-memory"),
        (["--db", "sqlite:///{tmp}/missing/ledger.db"], "does not exist"),
        (["--base-url", "ftp://x"], "must start with http:// or https://"),
        (["--render-timeout", "nan"], "--render-timeout"),
        (["--max-body-bytes", "10"], "--max-body-bytes"),
        (["--key", "wrong-key-0123456789"], "MAGIC_HOUR_API_KEY"),
    ],
)
def test_a_bad_setting_is_refused_before_anything_is_sent_or_written(
    tmp_path: Path, make_sandbox: MakeSandbox, flags: list[str], said: str
) -> None:
    sandbox = make_sandbox()
    job = write_job(tmp_path, prompts(3), name="settings")
    db = tmp_path / "ledger.db"
    key = sandbox.key
    if flags[0] == "--key":
        key, flags = flags[1], []
    extra = [flag.replace("{tmp}", str(tmp_path)) for flag in flags]
    base = [] if "--base-url" in extra else ["--base-url", sandbox.base_url]
    done = batcher(
        "run", str(job), "--db", f"sqlite:///{db}", *base, *extra,
        cwd=tmp_path, env=cli_env(MAGIC_HOUR_API_KEY=key),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert "new item" not in done.stdout + done.stderr, "the ledger was written first"
    assert list(sandbox.journal()) == []
    assert not db.exists(), "refused before the ledger was touched"
    assert key not in done.stdout + done.stderr


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_job_file_that_is_not_a_regular_file_is_refused_at_once(
    tmp_path: Path, kind: str
) -> None:
    if kind == "fifo":
        path = tmp_path / "job.yaml"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    for command in ("validate", "plan"):
        done = batcher(command, str(path), cwd=tmp_path, env=cli_env())
        assert done.returncode == 2, done.stderr
        assert "not a regular file" in done.stderr


def test_folder_names_are_distinct_and_fit_when_the_name_is_lossy() -> None:
    names = ["~", "🎉", "\u05e9\u05dc\u05d5\u05dd\u200f", "_", "nightly-2026"]
    folders = [folder_name(name) for name in names]
    assert len(set(folders)) == len(folders), folders
    assert folder_name("nightly-2026") == "nightly-2026"  # a safe name is kept as it is
    cjk = "夜" * 90  # 270 bytes of UTF-8: more than a file system allows in a name
    assert len(folder_name(cjk).encode()) <= 255
    assert folder_name(cjk) != folder_name("夜" * 91)


def test_a_long_cjk_batch_name_runs(tmp_path: Path, make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox()
    name = "夜" * 90
    job = write_job(tmp_path, prompts(2), name=name)
    done = batcher(
        "run", str(job), "--db", f"sqlite:///{tmp_path / 'l.db'}", "--base-url", sandbox.base_url,
        cwd=tmp_path, env=cli_env(MAGIC_HOUR_API_KEY=sandbox.key),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [folder] = (tmp_path / "out").iterdir()
    assert folder.name == folder_name(name)
    assert (folder / "manifest.jsonl").is_file()


def test_a_planted_manifest_symlink_is_not_followed(
    tmp_path: Path, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox()
    job = write_job(tmp_path, prompts(2), name="planted")
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    folder = tmp_path / "out" / "planted"
    folder.mkdir(parents=True)
    (folder / "manifest.jsonl").symlink_to(target)
    done = batcher(
        "run", str(job), "--db", f"sqlite:///{tmp_path / 'l.db'}", "--base-url", sandbox.base_url,
        cwd=tmp_path, env=cli_env(MAGIC_HOUR_API_KEY=sandbox.key),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "symbolic link" in done.stderr
    assert target.read_text() == "keep me\n"
    assert sandbox.journal() == []


def test_escape_sequences_in_prompts_never_reach_the_terminal(
    tmp_path: Path, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox(create_garble="non-json")
    hostile = "a cat \x1b]0;owned\x07\x1b[2J\x1b[31mred\x9b1m\x07 end"
    job = write_job(tmp_path, [{"prompt": hostile, "model": "z-image-turbo"}], name="ansi")
    env = cli_env(MAGIC_HOUR_API_KEY=sandbox.key, BATCHER_RETRY_INSTANT="1")
    db = f"sqlite:///{tmp_path / 'l.db'}"
    ran = batcher(
        "run", str(job), "--db", db, "--base-url", sandbox.base_url, cwd=tmp_path, env=env
    )
    assert ran.returncode == 1, ran.stderr
    url = ["--base-url", sandbox.base_url]
    for command in (["reconcile", *url], ["items", "ansi"], ["status"]):
        done = batcher(*command, "--db", db, cwd=tmp_path, env=env)
        assert done.returncode in (0, 1), done.stderr
        shown = done.stdout + done.stderr
        assert ESC not in shown and "\x07" not in shown and "\x9b" not in shown, command
    reconciled = batcher("reconcile", "--db", db, *url, cwd=tmp_path, env=env)
    assert "a cat" in reconciled.stdout and "end" in reconciled.stdout


def test_resume_with_a_rejected_key_changes_nothing(
    tmp_path: Path, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox()
    job = write_job(tmp_path, prompts(2), name="rekey")
    db = f"sqlite:///{tmp_path / 'l.db'}"
    url = ["--base-url", sandbox.base_url]
    first = batcher(
        "run", str(job), "--db", db, *url, "--no-wait",
        cwd=tmp_path, env=cli_env(MAGIC_HOUR_API_KEY=sandbox.key),
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    creates = len(sandbox.journal())
    done = batcher(
        "resume", "rekey", "--db", db, *url,
        cwd=tmp_path, env=cli_env(MAGIC_HOUR_API_KEY="revoked-key-0123456789"),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "MAGIC_HOUR_API_KEY" in done.stderr and "Traceback" not in done.stderr
    assert len(sandbox.journal()) == creates
