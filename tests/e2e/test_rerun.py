"""`batcher rerun BATCH --rejected`: the rejected images' prompts sent again, and
nothing else, held against the sandbox's journal."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from typing import Any

import pytest
from e2e_support import Batch, assert_exactly_once, batcher_command, cli_env

import batcher
from batcher.errors import ConfigError, PreflightError
from batcher.jobfile.catalog import load_catalog
from batcher.reports.gallery_data import gallery_data
from batcher.run import prepare

MakeBatch = Any

JOB = [
    {"prompt": "A red bicycle on a beach"},
    {"prompt": "A teal kettle, studio light", "image_count": 2},
    {"prompt": "A lamp in the fog"},
    {"prompt": "A watercolor map", "model": "flux-schnell"},
    {"prompt": "A chrome robot portrait"},
]


def reviewed(make_batch: MakeBatch, **sandbox: Any) -> tuple[Batch, dict[str, str]]:
    """The job run to the end, then reviewed: two items with rejected images (both
    images of the second one), one pick. Returns the batch and prompt -> key."""
    defaults = {"model": "z-image-turbo", "resolution": "640px"}
    batch = make_batch(JOB, job={"defaults": defaults}, **sandbox)
    assert batch.run().exit_code == 0
    with batch.ledger() as ledger:
        keys = {item.prompt: item.key for item in ledger.items(1)}
        ledger.record_review(1, keys["A red bicycle on a beach"], 0, "reject", "bent wheel")
        ledger.record_review(1, keys["A teal kettle, studio light"], 0, "reject")
        ledger.record_review(1, keys["A teal kettle, studio light"], 1, "reject")
        ledger.record_review(1, keys["A lamp in the fog"], 0, "pick")
        # Rejected, then cleared: no longer a decision.
        ledger.record_review(1, keys["A watercolor map"], 0, "reject")
        ledger.record_review(1, keys["A watercolor map"], 0, "clear")
    return batch, keys


def rerun(batch: Batch, **options: Any) -> batcher.RerunResult:
    return batcher.rerun(
        batch.name,
        db=batch.db_url,
        base_url=batch.sandbox.base_url,
        env={"MAGIC_HOUR_API_KEY": batch.sandbox.key},
        out=batch.tmp / "out",
        preflight=options.pop("preflight", False),
        **options,
    )


def sent_prompts(batch: Batch, since: int) -> Counter[str]:
    return Counter(entry.body["style"]["prompt"] for entry in batch.sandbox.journal()[since:])


def item_count(batch: Batch) -> int:
    with batch.ledger() as ledger:
        return len(list(ledger.items(1)))


REJECTED = Counter({"A red bicycle on a beach": 1, "A teal kettle, studio light": 1})


def test_a_dry_run_prices_the_rejects_and_sends_nothing(make_batch: MakeBatch) -> None:
    batch, keys = reviewed(make_batch)
    creates = len(batch.sandbox.journal())
    result = rerun(batch, dry_run=True)
    assert result.dry_run and result.summary is None and result.exit_code == 0
    plan = result.plan
    assert {entry.redoes for entry in plan.entries} == {
        keys["A red bicycle on a beach"],
        keys["A teal kettle, studio light"],
    }
    kettle = next(e for e in plan.entries if e.redoes == keys["A teal kettle, studio light"])
    assert kettle.images == (1, 2) and kettle.settings.image_count == 2
    assert plan.credits == 5 + 10 and plan.exact
    assert len(batch.sandbox.journal()) == creates
    assert item_count(batch) == len(JOB)


def test_a_rerun_sends_exactly_the_rejected_prompts_once(make_batch: MakeBatch) -> None:
    batch, keys = reviewed(make_batch)
    creates = len(batch.sandbox.journal())
    asked: list[batcher.RerunPlan] = []

    def confirm(plan: batcher.RerunPlan) -> bool:
        asked.append(plan)
        return True

    result = rerun(batch, confirm=confirm)
    assert len(asked) == 1 and asked[0] == result.plan
    assert result.summary is not None and result.exit_code == 0
    assert sent_prompts(batch, creates) == REJECTED
    assert result.summary.states["complete"] == len(JOB) + 2
    assert result.summary.counters.images == 3
    with batch.ledger() as ledger:
        links = ledger.redo_links(1)
        new = {item.key: item for item in ledger.items(1) if item.key in links}
        data = gallery_data(ledger, batch.name, batch.tmp / "out")
    assert sorted(links.values()) == sorted(
        [keys["A red bicycle on a beach"], keys["A teal kettle, studio light"]]
    )
    for key, item in new.items():
        old_prompt = next(p for p, k in keys.items() if k == links[key])
        assert item.prompt == old_prompt and item.state == "complete" and len(item.files) >= 1
    # The gallery puts each new item beside the one it redoes.
    assert {item.key: item.redo_of for item in data.items if item.redo_of} == links
    assert result.summary.gallery is not None and result.summary.gallery.exists()
    # The same rejects again: nothing is made twice.
    again = rerun(batch)
    assert again.summary is None and not again.plan.entries
    assert sorted(again.plan.already_rerun) == sorted(links.values())
    assert sent_prompts(batch, creates) == REJECTED
    # Unless asked.
    once_more = rerun(batch, again=True)
    assert once_more.exit_code == 0
    assert sent_prompts(batch, creates) == REJECTED + REJECTED
    assert_exactly_once(batch)


def test_overrides_are_checked_against_the_catalog(make_batch: MakeBatch) -> None:
    batch, _ = reviewed(make_batch)
    creates = len(batch.sandbox.journal())
    with pytest.raises(ConfigError, match=r"(?s)--model krea-2.*image_count 2"):
        rerun(batch, model="krea-2")
    with pytest.raises(ConfigError, match="--model no-such-model: unknown model"):
        rerun(batch, model="no-such-model", dry_run=True)
    with pytest.raises(ConfigError, match="--resolution 8k: unknown resolution"):
        rerun(batch, resolution="8k")
    assert len(batch.sandbox.journal()) == creates and item_count(batch) == len(JOB)
    result = rerun(batch, model="flux-schnell", resolution="1k")
    assert result.exit_code == 0
    new = batch.sandbox.journal()[creates:]
    assert {(e.model, e.body["resolution"]) for e in new} == {("flux-schnell", "1k")}


def test_a_declined_or_refused_rerun_writes_nothing(make_batch: MakeBatch) -> None:
    batch, _ = reviewed(make_batch, tier="free")
    creates = len(batch.sandbox.journal())
    declined = rerun(batch, confirm=lambda plan: False)
    assert declined.declined and declined.summary is None and declined.exit_code == 0
    assert item_count(batch) == len(JOB)
    # A model the free tier may not use: refused by preflight, the new items taken back.
    with pytest.raises(PreflightError):
        rerun(batch, model="seedream-v4", preflight=True)
    assert item_count(batch) == len(JOB)
    assert len(batch.sandbox.journal()) == creates
    with batch.ledger() as ledger:
        assert ledger.redo_links(1) == {}


def test_a_batch_with_other_pending_items_is_refused(make_batch: MakeBatch) -> None:
    batch, _ = reviewed(make_batch)
    creates = len(batch.sandbox.journal())
    # A prompt added to the job file and never run: pending, not a rerun.
    batch.job.write_text(batch.job.read_text() + "- A prompt added later\n")
    catalog = load_catalog()
    with batch.ledger() as ledger:
        [spec] = prepare.load_jobs([batch.job], catalog)
        prepare.prepare_batch(
            ledger, spec, catalog, budget=None, retry_failed=False, resend_unconfirmed=False
        )
    assert rerun(batch, dry_run=True).plan.other_pending == 1
    with pytest.raises(ConfigError, match="1 pending item"):
        rerun(batch)
    assert len(batch.sandbox.journal()) == creates


def test_the_cli_asks_and_without_a_terminal_stops_after_the_plan(
    make_batch: MakeBatch,
) -> None:
    batch, _ = reviewed(make_batch)
    creates = len(batch.sandbox.journal())
    common = ("--db", batch.db_url, "--base-url", batch.sandbox.base_url, "--no-preflight")
    env = cli_env(MAGIC_HOUR_API_KEY=batch.sandbox.key)
    out = ("--out", str(batch.tmp / "out"))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            batcher_command("rerun", batch.name, *args, *common, *out),
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )

    missing = cli()
    assert missing.returncode == 2 and "--rejected" in missing.stderr
    dry = cli("--rejected", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "A teal kettle, studio light" in dry.stdout and "dry run" in dry.stderr
    unasked = cli("--rejected")
    assert unasked.returncode == 0, unasked.stderr
    assert "A red bicycle on a beach" in unasked.stdout
    assert "not sent" in unasked.stderr and "--rejected" in unasked.stderr
    assert "--yes" in unasked.stderr
    assert len(batch.sandbox.journal()) == creates and item_count(batch) == len(JOB)
    sent = cli("--rejected", "--yes")
    assert sent.returncode == 0, sent.stderr
    assert sent_prompts(batch, creates) == REJECTED
    status = subprocess.run(
        batcher_command("status", "--json", "--db", batch.db_url),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    [row] = json.loads(status.stdout)["batches"]
    assert row["reviews"] == {"picked": 1, "rejected": 3}
    table = subprocess.run(
        batcher_command("status", "--db", batch.db_url),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    header, line = table.stdout.splitlines()[1:3]
    assert header.split()[-2:] == ["picked", "rejected"]
    assert line.split()[-2:] == ["1", "3"]
