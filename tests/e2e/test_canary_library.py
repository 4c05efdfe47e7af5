"""`batcher.run(..., canary=N)` as a program uses it: the report reaches the
observer, the question is the observer's to answer, and nothing is printed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_support import prompts, write_job

import batcher
from batcher.run.canary import STOP_CANARY, CanaryReport
from batcher.sandbox import SandboxHandle

MakeSandbox = Callable[..., SandboxHandle]

pytestmark = pytest.mark.slow


class Answers(batcher.RunObserver):
    def __init__(self, answer: bool | None) -> None:
        self.answer = answer
        self.reports: list[CanaryReport] = []
        self.asked: list[str] = []

    def canary_finished(self, report: CanaryReport) -> None:
        self.reports.append(report)

    def confirm_canary(self, report: CanaryReport) -> bool | None:
        self.asked.append(report.question())
        return self.answer


@pytest.mark.parametrize("answer", [True, False, None])
def test_the_observer_sees_the_report_and_answers(
    tmp_path: Path,
    make_sandbox: MakeSandbox,
    capfd: pytest.CaptureFixture[str],
    answer: bool | None,
) -> None:
    sandbox = make_sandbox()
    job = write_job(
        tmp_path, prompts(3) + prompts(2, model="flux-schnell", resolution="640px"), name="lib"
    )
    observer = Answers(answer)
    summary = batcher.run(
        job,
        base_url=sandbox.base_url,
        env={"MAGIC_HOUR_API_KEY": sandbox.key},
        db=f"sqlite:///{tmp_path / 'ledger.db'}",
        out=tmp_path / "out",
        observer=observer,
        canary=2,
        handle_signals=False,
    )
    [report] = observer.reports
    assert report.items == 2 and report.failed == 0
    assert {row.kind[0] for row in report.kinds} == {"z-image-turbo", "flux-schnell"}
    assert all(row.charged == 5 for row in report.kinds)
    assert report.remaining == 3 and report.remaining_credits == 15
    assert report.balance is not None and report.problem is None
    assert len(report.images) == 2
    assert all(Path(path).is_file() for path in report.images)
    assert observer.asked == ["Continue with the remaining 3 items (about 15 credits)? [y/N]"]
    assert summary.exit_code == 0
    if answer:
        assert len(sandbox.journal()) == 5 and summary.states["complete"] == 5
        assert summary.counters.sent == 5  # the canary's and the rest's, as one run
    else:
        assert len(sandbox.journal()) == 2 and summary.stopped == STOP_CANARY
        assert summary.unsent == 3
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_yes_goes_on_without_asking(tmp_path: Path, make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox()
    job = write_job(tmp_path, prompts(4), name="yes")
    observer = Answers(False)
    summary = batcher.run(
        job,
        base_url=sandbox.base_url,
        env={"MAGIC_HOUR_API_KEY": sandbox.key},
        db=f"sqlite:///{tmp_path / 'ledger.db'}",
        out=tmp_path / "out",
        observer=observer,
        canary=1,
        yes=True,
        handle_signals=False,
    )
    assert observer.asked == [] and len(observer.reports) == 1
    assert summary.exit_code == 0 and len(sandbox.journal()) == 4


def test_a_canary_cannot_skip_waiting(tmp_path: Path) -> None:
    with pytest.raises(batcher.ConfigError, match="--no-wait"):
        batcher.run(write_job(tmp_path, prompts(1)), sandbox=True, canary=1, wait=False)
