"""The README's nightly recipes: the systemd unit files in docs/systemd/ pass
`systemd-analyze verify` (skipped where it is not installed) and hold what the
recipe promises; the README names them and gives a crontab line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
UNITS = ROOT / "docs" / "systemd"
SERVICE = UNITS / "batcher-nightly.service"
TIMER = UNITS / "batcher-nightly.timer"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_the_units_verify(tmp_path: Path) -> None:
    # Copies: verify reads a unit's name from its path, and warns in place of failing.
    for unit in (SERVICE, TIMER):
        shutil.copy(unit, tmp_path / unit.name)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / SERVICE.name), str(tmp_path / TIMER.name)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    complaints = [
        line for line in (done.stdout + done.stderr).splitlines() if "batcher-nightly" in line
    ]
    assert not complaints, complaints


def test_the_service_gives_sigterm_time_locks_and_writes_metrics_and_logs() -> None:
    text = SERVICE.read_text()
    assert "TimeoutStopSec=" in text and "KillSignal=SIGTERM" in text
    # --no-fork: SIGTERM reaches batcher itself, not a flock waiting for it.
    assert "/usr/bin/flock --nonblock --no-fork" in text
    assert "--metrics-file " in text and ".prom" in text
    assert "--log-file " in text and "StandardError=journal" in text
    assert "SuccessExitStatus=143" in text
    assert "OnCalendar=" in TIMER.read_text()


def test_the_readme_has_the_recipes() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/systemd/batcher-nightly.service" in readme
    assert "docs/systemd/batcher-nightly.timer" in readme
    [cron] = [line for line in readme.splitlines() if line.startswith("30 1 * * *")]
    assert "flock" in cron and "batcher run" in cron and "--metrics-file" in cron
    assert "nohup" in readme and "systemd-run" in readme
    assert "Python 3.11" in readme
