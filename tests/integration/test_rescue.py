"""The rescue file (batcher.ledger.rescue) on a real SQLite ledger: applied once
whatever happens (twice, after a crash between commit and rename), by key (so a
rebuilt ledger takes it), a torn last line skipped, a file in the current folder
applied only to the ledger it names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batcher.jobfile.items import ItemSettings, JobItem
from batcher.ledger import BeginSend, Created, Ledger, RenderFinished, SendFailed, utcnow
from batcher.ledger.identity import FileWatch
from batcher.ledger.rescue import RescueFile, entry
from batcher.ledger.values import LedgerOp

SETTINGS = ItemSettings("z-image-turbo", None, "1:1", "general", 1)


def make(path: Path, *, items: int = 3) -> None:
    with Ledger.open(f"sqlite:///{path}") as ledger:
        batch, _ = ledger.open_batch(
            "night", job_path=None, job_hash=None, budget=None, settings={}
        )
        ledger.sync_items(
            batch.id,
            [JobItem(n, f"k{n}", f"p {n}", SETTINGS, "job.yaml", n + 1) for n in range(items)],
            estimate=lambda _s: (5, True),
            project_name=lambda item: item.key,
        )
        claimed = ledger.claim(batch.id, "w", states=["pending"], limit=items, lease_until=utcnow())
        ledger.apply([BeginSend(i.id, batch.id, "w", 5) for i in claimed])


def lines(path: Path, *ops: tuple[str, LedgerOp]) -> str:
    return "".join(
        json.dumps(entry(op, ledger=str(path), batch="night", key=key, at=utcnow())) + "\n"
        for key, op in ops
    )


def test_a_rescue_file_is_applied_once_even_if_applied_twice(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    make(path)
    rescue = tmp_path / "ledger.db.rescue.jsonl"
    text = lines(
        path,
        ("k0", Created(1, 1, "p-0", 5, 5, True)),
        ("k0", RenderFinished(1, 1, "p-0", "complete", files=("a.png",))),
        ("k1", Created(2, 1, "p-1", 7, 5, True)),
        ("k2", SendFailed(3, 1, "pending", 5)),
    )
    rescue.write_text(text + '{"ledger": "torn')
    with Ledger.open(f"sqlite:///{path}") as ledger:
        states = {i.key: (i.state, i.project_id) for i in ledger.items(1)}
        [summary] = ledger.batch_summaries()
    assert states == {
        "k0": ("complete", "p-0"),
        "k1": ("submitted", "p-1"),
        "k2": ("pending", None),
    }
    assert summary.credits_charged == 12 and summary.credits_net == 12
    assert not rescue.exists() and rescue.with_name(rescue.name + ".applied").exists()
    # A crash between the commit and the rename: the same file again changes nothing.
    rescue.write_text(text)
    with Ledger.open(f"sqlite:///{path}") as ledger:
        [again] = ledger.batch_summaries()
        assert {i.key: (i.state, i.project_id) for i in ledger.items(1)} == states
    assert again.credits_charged == 12 and again.credits_net == 12


def test_a_file_in_the_current_folder_is_applied_only_to_its_own_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    mine, other = tmp_path / "a" / "ledger.db", tmp_path / "b" / "ledger.db"
    make(mine)
    make(other)
    shared = tmp_path / "batcher-rescue-ledger.db.jsonl"
    shared.write_text(lines(mine, ("k0", Created(1, 1, "p-0", 5, 5, True))))
    with Ledger.open(f"sqlite:///{other}") as ledger:
        assert [i.project_id for i in ledger.items(1)] == [None, None, None]
    assert shared.exists(), "left for the ledger it names"
    with Ledger.open(f"sqlite:///{mine}") as ledger:
        assert [i.project_id for i in ledger.items(1)] == ["p-0", None, None]
    assert not shared.exists()


def test_the_rescue_file_falls_back_when_its_first_place_cannot_be_written(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    fallback = tmp_path / "fallback.jsonl"
    rescue = RescueFile([blocked / "x.jsonl", fallback])
    assert rescue.append([{"key": "k"}]) == fallback
    assert rescue.path == fallback
    assert json.loads(fallback.read_text()) == {"key": "k"}


def test_a_file_watch_tells_removed_replaced_and_truncated(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"x" * 100)
    watch = FileWatch(path)
    assert watch.check() is None
    path.write_bytes(b"x" * 200)  # grown: the same file
    assert watch.check() is None
    path.write_bytes(b"x" * 10)
    assert watch.check() == "truncated (200 bytes, now 10)"
    replaced = FileWatch(path)
    # Made before the old one goes, so that it cannot reuse its inode number.
    (tmp_path / "new").write_bytes(b"y" * 10)
    (tmp_path / "new").replace(path)
    assert replaced.check() == "replaced by another file"
    gone = FileWatch(path)
    path.unlink()
    assert gone.check() == "removed"


def test_a_group_tried_again_after_it_did_commit_is_not_applied_twice(ledger_url: str) -> None:
    """A PostgreSQL connection lost after COMMIT was sent: the writer tries the group
    again (same timestamp, again=True), which finds it committed and reads back its
    results instead of reserving, charging or counting twice."""
    with Ledger.open(ledger_url) as ledger:
        batch, _ = ledger.open_batch("night", job_path=None, job_hash=None, budget=100, settings={})
        ledger.sync_items(
            batch.id,
            [JobItem(n, f"k{n}", f"p {n}", SETTINGS, "job.yaml", n + 1) for n in range(3)],
            estimate=lambda _s: (5, True),
            project_name=lambda item: item.key,
        )
        a, b, c = ledger.claim(batch.id, "w", states=["pending"], limit=3, lease_until=utcnow())
        ledger.apply([BeginSend(a.id, batch.id, "w", 5)])
        group = [
            Created(a.id, batch.id, "p-a", 7, 5, True),
            BeginSend(b.id, batch.id, "w", 5),
            BeginSend(c.id, batch.id, "w", 500),  # no room in the budget
        ]
        at = ledger.now()
        first = ledger.apply(group, at=at)
        [before] = ledger.batch_summaries()
        again = ledger.apply(group, at=at, again=True)
        [after] = ledger.batch_summaries()
        stored = ledger.get_batch("night")
    assert first == again == [None, True, False]
    assert after == before
    assert stored is not None and (stored.credits_net, stored.credits_reserved) == (7, 5)
