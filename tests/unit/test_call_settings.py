"""The sending calls' keyword arguments: declared once, checked like a signature."""

from __future__ import annotations

from pathlib import Path

import pytest

import batcher
from batcher.run.call_settings import RunArgs, WorkerArgs, split
from batcher.run.session import SendSettings


def test_every_declared_setting_is_a_field_of_send_settings_or_the_context() -> None:
    fields = set(SendSettings.__dataclass_fields__)
    where = {"db", "catalog", "base_url", "env", "observer", "handle_signals"}
    # --webhook-listen arrives as HOST:PORT and becomes the receiver's settings.
    declared = set(RunArgs.__annotations__) - where - {"webhook_listen"} | {"webhook"}
    assert declared == fields


def test_settings_reach_the_run_and_the_context(tmp_path: Path) -> None:
    send, context = split(
        "run",
        {"concurrency": 3, "out": str(tmp_path), "db": f"sqlite:///{tmp_path}/l.db", "env": {}},
    )
    assert send.concurrency == 3
    assert send.out == tmp_path
    assert context.db_url == f"sqlite:///{tmp_path}/l.db"


def test_a_misspelt_setting_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(
        TypeError, match="run\\(\\) got unexpected keyword argument\\(s\\): concurrncy"
    ):
        batcher.run(tmp_path / "missing.yaml", concurrncy=3)  # type: ignore[call-arg]


def test_a_worker_requeues_nothing() -> None:
    assert "resend_unconfirmed" not in WorkerArgs.__annotations__
    with pytest.raises(TypeError, match="resend_unconfirmed"):
        split("worker", {"resend_unconfirmed": True}, joining=True)
