"""A full disk under the images: the run stops cleanly and `resume` pays nothing.

The item whose images could not be saved, and every render still followed,
stays `submitted` with its project id; downloads and new creates stop; the
run ends with exit 1 and a one-line reason, no traceback. `resume` then polls
the known projects again, fetches their images and creates only what was
never sent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    Batch,
    assert_exactly_once,
    batcher_command,
    check_against_journal,
    cli_env,
    prompts,
    run_runner,
    write_job,
)

from batcher.client.magic_hour import CreatedProject, MagicHourClient, ProjectStatus
from batcher.ledger import Ledger
from batcher.run.batch_run import STOP_OUTPUT

MakeBatch = Any


class FolderGoneAfter:
    """The real client, except that after `downloads` downloads the output folder
    is replaced by a file: from then on every write there fails in the real
    download code with a real OSError, as on a full disk."""

    def __init__(self, client: MagicHourClient, folder: Path, downloads: int) -> None:
        self._client = client
        self._folder = folder
        self._left = downloads

    async def create_image(self, body: Any) -> CreatedProject:
        return await self._client.create_image(body)

    async def get_project(self, project_id: str) -> ProjectStatus:
        return await self._client.get_project(project_id)

    async def download(self, url: str, dest: Path) -> int:
        if self._left == 0:
            self._folder.rename(self._folder.with_name("saved-before"))
            self._folder.write_bytes(b"not a folder")
        self._left -= 1
        return await self._client.download(url, dest)


def _items(batch: Batch) -> dict[str, int]:
    with batch.ledger() as ledger:
        return {k: v for k, v in ledger.state_counts(1).items() if v}


def test_a_write_failure_mid_download_leaves_items_submitted(make_batch: MakeBatch) -> None:
    # Creates at ~40/s (latency 0.05 s, 2 at once) while the first look at a
    # render comes after about a second: sending is still going when the disk fails.
    batch = make_batch(prompts(80), latency=0.05)
    out = batch.tmp / "out"
    result = run_runner(batch, lambda real: FolderGoneAfter(real, out, 3), concurrency=2)
    assert result.stopped == STOP_OUTPUT
    assert result.stop_detail is not None and str(out) in result.stop_detail
    assert not result.succeeded
    states = _items(batch)
    assert "failed" not in states and "unconfirmed" not in states, states
    assert states.get("submitted", 0) > 0, "the render whose images failed stays submitted"
    assert states.get("pending", 0) == result.unsent > 0, "new creates stopped"
    assert states.get("complete", 0) <= 3  # saved before the folder went
    with batch.ledger() as ledger:
        submitted = [i for i in ledger.items(1) if i.state == "submitted"]
    assert all(i.project_id for i in submitted)
    assert_exactly_once(batch)
    sent = len(batch.sandbox.journal())

    out.unlink()  # room again
    again = batch.run(resume=True, concurrency=2)
    assert again.succeeded
    assert again.counters.sent == result.unsent, "only what was never sent is created"
    assert len(batch.sandbox.journal()) == sent + result.unsent == 80
    assert_exactly_once(batch)
    saved = len(list(out.glob("*.png"))) + len(list((batch.tmp / "saved-before").glob("*.png")))
    assert saved == 80


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


@pytest.mark.slow
def test_a_full_disk_through_the_cli_exits_1_without_a_traceback(
    tmp_path: Path, external_sandbox: Any
) -> None:
    unshare = _unshare()
    sandbox = external_sandbox("--render-seconds", "0.05", "--latency", "0.05")
    job = write_job(tmp_path, prompts(100), name="disk")
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    full = tmp_path / "full"
    full.mkdir()
    env = cli_env(MAGIC_HOUR_API_KEY="sandbox-key", BATCHER_RETRY_INSTANT="1")
    common = ["--base-url", sandbox.base_url, "--db", db, "--concurrency", "2"]
    # A 64 KiB tmpfs over the output folder, for this process only: room for
    # about 15 images (a page each), then ENOSPC.
    mount = 'mount -t tmpfs -o size=64k tmpfs "$0" && exec "$@"'
    in_namespace = [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", mount, str(full)]
    run = subprocess.run(
        [*in_namespace, *batcher_command("run", str(job), *common, "--out", str(full))],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 1, run.stderr
    assert "No space left on device" in run.stderr
    assert "Traceback" not in run.stderr and "ExceptionGroup" not in run.stderr, run.stderr
    stop_lines = [line for line in run.stderr.splitlines() if "sending stopped:" in line]
    assert len(stop_lines) == 1 and "batcher resume disk" in stop_lines[0], run.stderr
    with Ledger.open(db) as ledger:
        states = ledger.state_counts(1)
        assert all(i.project_id for i in ledger.items(1) if i.state == "submitted")
    assert states["failed"] == states["unconfirmed"] == states["sending"] == 0, states
    assert states["submitted"] > 0 and states["pending"] > 0, states
    check_against_journal(db, sandbox.journal())

    final = subprocess.run(
        batcher_command("resume", "disk", *common, "--out", str(tmp_path / "out")),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert final.returncode == 0, final.stderr
    states = check_against_journal(db, sandbox.journal())
    assert states["complete"] == 100
    assert len(sandbox.journal()) == 100, "nothing was paid twice"


def test_an_unwritable_out_is_refused_before_anything_is_sent_even_as_root(
    tmp_path: Path, external_sandbox: Any
) -> None:
    # A read-only tmpfs over --out: unwritable for root too (chmod is not).
    unshare = _unshare()
    sandbox = external_sandbox("--render-seconds", "0.05")
    job = write_job(tmp_path, prompts(5), name="readonly")
    db = tmp_path / "ledger.db"
    locked = tmp_path / "locked"
    locked.mkdir()
    mount = 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"'
    in_namespace = [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", mount, str(locked)]
    run = subprocess.run(
        [
            *in_namespace,
            *batcher_command(
                "run", str(job), "--base-url", sandbox.base_url, "--db", f"sqlite:///{db}",
                "--out", str(locked),
            ),
        ],
        env=cli_env(MAGIC_HOUR_API_KEY="sandbox-key"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    [line] = run.stderr.splitlines()
    assert line.startswith("error: ") and str(locked) in line and "writable" in line, line
    assert sandbox.journal() == [], "nothing was sent"
    assert not db.exists(), "refused before the ledger was touched"
