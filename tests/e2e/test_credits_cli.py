"""`batcher audit`, `batcher reconcile` and `batcher account` through the real command line.

Ledgers are real SQLite files written through the ledger's own operations;
the API is the in-process sandbox over real HTTP, reached the way a user
would: MAGIC_HOUR_API_KEY in the environment and --base-url.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from batcher.cli import main
from batcher.client import retry
from batcher.client.body import create_body
from batcher.jobfile.items import ItemSettings, JobItem, project_name
from batcher.ledger import BeginSend, Created, Ledger, RenderFinished, SendFailed, utcnow
from batcher.sandbox import SandboxHandle

MakeSandbox = Callable[..., SandboxHandle]  # the `make_sandbox` fixture of tests/conftest.py

SECRET = "mhk_live_e2e_secret_never_shown_0123456789"
DOCUMENTED = ("rows", "total_credits_charged", "total_credits_refunded", "total_credits_net")
ROW_KEYS = (
    "credits_charged",
    "credits_refunded",
    "credits_net",
    "images",
    "items",
    "failures",
    "credits_per_image",
)


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAGIC_HOUR_API_KEY", "MAGIC_HOUR_BASE_URL", "BATCHER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- ledgers


def items_for(batch: str, specs: list[tuple[str, str | None, int]]) -> list[JobItem]:
    return [
        JobItem(
            n,
            f"{batch}-{n}",
            f"prompt {n} of {batch}",
            ItemSettings(model, resolution, "1:1", "general", count),
            "job.yaml",
            n + 1,
        )
        for n, (model, resolution, count) in enumerate(specs)
    ]


@pytest.fixture
def audited_db(tmp_path: Path) -> str:
    """Two batches: 3 charges (one refunded) and 2 charges (none), and one item in doubt.

    alpha: z-image-turbo 1k x1 (5), z-image-turbo 2k x2 (20, refunded), seedream-v4 x4 (160)
    beta:  gpt-image-2 4k x1 (100), z-image-turbo 1k x1 (5), and one unconfirmed item
    """
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    plan: dict[str, list[tuple[str, str | None, int]]] = {
        "alpha": [("z-image-turbo", "1k", 1), ("z-image-turbo", "2k", 2), ("seedream-v4", None, 4)],
        "beta": [("gpt-image-2", "4k", 1), ("z-image-turbo", "1k", 1), ("gpt-image-2", "4k", 1)],
    }
    charges = {"alpha": [5, 20, 160], "beta": [100, 5]}
    with Ledger.open(url) as ledger:
        for name, specs in plan.items():
            batch, _ = ledger.open_batch(
                name, job_path=None, job_hash=None, budget=None, settings={}
            )
            ledger.sync_items(
                batch.id,
                items_for(name, specs),
                estimate=lambda _s: (5, True),
                project_name=lambda item: item.key,
            )
            claimed = ledger.claim(
                batch.id,
                "w",
                states=["pending"],
                limit=10,
                lease_until=utcnow() + timedelta(hours=1),
            )
            for n, item in enumerate(claimed):
                ledger.apply([BeginSend(item.id, batch.id, "w", 0)])
                if n >= len(charges[name]):
                    ledger.apply([SendFailed(item.id, batch.id, "unconfirmed", 0, message="lost")])
                    continue
                project = f"{name}-p{n}"
                ledger.apply(
                    [Created(item.id, batch.id, project, charges[name][n], 0, keep_claim=True)]
                )
                if project == "alpha-p1":
                    ledger.apply([RenderFinished(item.id, batch.id, project, "failed", refund=20)])
                else:  # `images` counts the images saved
                    saved = tuple(f"{item.key}-{k}.png" for k in range(item.settings.image_count))
                    ledger.apply(
                        [RenderFinished(item.id, batch.id, project, "complete", files=saved)]
                    )
    return url


def test_audit_table_by_batch_has_totals_and_doubt(audited_db: str) -> None:
    result = cli("audit", "--db", audited_db)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "alpha" in text and "beta" in text
    assert "total" in text
    assert "290" in text  # charged 185 + 105
    assert "270" in text  # net
    assert "1 item(s) are in doubt" in text


def test_audit_json_has_the_documented_shape(audited_db: str) -> None:
    result = cli("audit", "--db", audited_db, "--format", "json", "--by", "batch,model")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    for key in DOCUMENTED:
        assert key in document
    assert document["total_credits_charged"] == 290
    assert document["total_credits_refunded"] == 20
    assert document["total_credits_net"] == 270
    assert document["items_in_doubt"] == 1
    rows = {(row["batch"], row["model"]): row for row in document["rows"]}
    assert list(rows) == [
        ("alpha", "seedream-v4"),
        ("alpha", "z-image-turbo"),
        ("beta", "gpt-image-2"),
        ("beta", "z-image-turbo"),
    ]
    for row in document["rows"]:
        assert list(row) == ["batch", "model", *ROW_KEYS]
    assert rows["alpha", "z-image-turbo"] == {
        "batch": "alpha",
        "model": "z-image-turbo",
        "credits_charged": 25,
        "credits_refunded": 20,
        "credits_net": 5,
        "images": 1,
        "items": 2,
        "failures": 1,
        "credits_per_image": 5.0,
    }
    assert rows["alpha", "seedream-v4"]["credits_per_image"] == 40.0


def test_audit_csv_is_spreadsheet_ready(audited_db: str) -> None:
    result = cli("audit", "--db", audited_db, "--format", "csv", "--by", "day,batch,resolution")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows
    header = result.stdout.splitlines()[0].split(",")
    assert header == ["day", "batch", "resolution", *ROW_KEYS]
    today = utcnow().date().isoformat()
    assert {row["day"] for row in rows} == {today}
    assert sum(int(row["credits_charged"]) for row in rows) == 290
    assert sum(int(row["credits_net"]) for row in rows) == 270
    assert not any(row["day"].lower().startswith("total") for row in rows)
    unset = [row for row in rows if row["resolution"] == ""]
    assert len(unset) == 1 and unset[0]["credits_charged"] == "160"
    # Totals and the doubt go to stderr, never into the data.
    assert "290 charged" in result.stderr
    assert "in doubt" in result.stderr


def test_audit_csv_to_a_pipe_is_clean(audited_db: str, tmp_path: Path) -> None:
    """The real console entry point: stdout holds the CSV and nothing else."""
    completed = subprocess.run(
        [sys.executable, "-m", "batcher", "audit", "--db", audited_db, "--format", "csv"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    rows = list(csv.reader(io.StringIO(completed.stdout)))
    assert rows[0][0] == "batch"
    assert [row[0] for row in rows[1:]] == ["alpha", "beta"]
    assert [row[1] for row in rows[1:]] == ["185", "105"]


def test_audit_window_and_batch_filters(audited_db: str) -> None:
    later = cli("audit", "--db", audited_db, "--format", "json", "--since", "2999-01-01")
    assert later.exit_code == 0
    assert json.loads(later.stdout)["rows"] == []
    beta = cli("audit", "--db", audited_db, "--format", "json", "--batch", "beta")
    document = json.loads(beta.stdout)
    assert [row["batch"] for row in document["rows"]] == ["beta"]
    assert document["total_credits_net"] == 105
    assert document["items_in_doubt"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "last tuesday"), "--since"),
        (("--until", "2026-02-30"), "--until"),
        (("--since", "2026-02-02", "--until", "2026-02-01"), "before --until"),
        (("--by", "batch,week"), "week"),
        (("--batch", "gamma"), "no batch named 'gamma'"),
        (("--chart", "chart.pdf"), ".png or .svg"),
        (("--format", "xml"), "xml"),
    ],
)
def test_audit_bad_input_exits_2(audited_db: str, args: tuple[str, ...], message: str) -> None:
    result = cli("audit", "--db", audited_db, *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_audit_chart_is_written(audited_db: str, tmp_path: Path, suffix: str) -> None:
    pytest.importorskip("matplotlib")
    chart = tmp_path / f"credits.{suffix}"
    result = cli("audit", "--db", audited_db, "--chart", str(chart), "--format", "json")
    assert result.exit_code == 0, result.output
    assert chart.stat().st_size > 1000
    assert json.loads(result.stdout)["total_credits_net"] == 270
    assert str(chart) in result.stderr


def test_audit_chart_that_cannot_be_written_prints_nothing(audited_db: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    result = cli("audit", "--db", audited_db, "--chart", str(blocker / "chart.png"))
    assert result.exit_code == 2
    assert "cannot write" in result.stderr
    assert result.stdout == ""


def test_audit_chart_without_matplotlib_says_which_extra(
    audited_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = cli("audit", "--db", audited_db, "--chart", str(tmp_path / "c.png"))
    assert result.exit_code == 2
    assert "install batcher[chart]" in result.stderr
    assert not (tmp_path / "c.png").exists()


# --------------------------------------------------------------------------- reconcile


def seed_from_sandbox(url: str, sandbox: SandboxHandle, *, created: int, lost: int) -> None:
    """A batch whose run sent `created` creates and stopped following them, and lost `lost`."""
    settings = ItemSettings("flux-schnell", "1k", "1:1", "general", 1)
    with Ledger.open(url) as ledger:
        batch, _ = ledger.open_batch(
            "nightly", job_path=None, job_hash=None, budget=None, settings={}
        )
        ledger.sync_items(
            batch.id,
            [
                JobItem(n, f"key{n:03d}", f"a lighthouse, variant {n}", settings, "job.yaml", n)
                for n in range(created + lost)
            ],
            estimate=lambda _s: (5, True),
            project_name=lambda item: project_name("nightly", item.key, item.settings),
        )
        items = ledger.claim(
            batch.id, "w", states=["pending"], limit=100, lease_until=utcnow() + timedelta(hours=1)
        )
        for n, item in enumerate(items):
            ledger.apply([BeginSend(item.id, batch.id, "w", 5)])
            answer: dict[str, Any] = httpx.post(
                f"{sandbox.base_url}/v1/ai-image-generator",
                json=create_body(item.prompt, item.settings, item.project_name),
                headers={"Authorization": f"Bearer {sandbox.key}"},
                timeout=10.0,
            ).json()
            if n < created:
                ledger.apply(
                    [
                        Created(
                            item.id,
                            batch.id,
                            answer["id"],
                            answer["credits_charged"],
                            5,
                            keep_claim=False,
                        )
                    ]
                )
            else:
                ledger.apply([SendFailed(item.id, batch.id, "unconfirmed", 5, message="lost")])


def wait_for_renders(sandbox: SandboxHandle) -> None:
    deadline = time.monotonic() + 10
    while not all(e.status in ("complete", "error") for e in sandbox.journal()):
        assert time.monotonic() < deadline, "renders did not finish"
        time.sleep(0.05)


def test_reconcile_records_late_refunds_then_nothing(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    sandbox = make_sandbox(key=SECRET, render_error_rate=1.0, render_seconds=0.1)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    seed_from_sandbox(url, sandbox, created=4, lost=1)
    wait_for_renders(sandbox)
    env = {"MAGIC_HOUR_API_KEY": SECRET}
    args = ("reconcile", "--db", url, "--base-url", sandbox.base_url)

    first = cli(*args, "--json", env=env)
    assert first.exit_code == 0, first.output
    document = json.loads(first.stdout)
    journal = sandbox.journal()
    refunded_on_server = sum(e.credits_refunded for e in journal[:4])
    assert document["projects_polled"] == 4
    assert document["statuses"] == {"error": 4}
    assert document["refunds_found"] == 4
    assert document["credits_refunded"] == refunded_on_server
    assert document["projects_not_found"] == []
    [doubt] = document["items_in_doubt"]
    assert doubt["name"] == "nightly key004" == journal[4].name
    assert doubt["key"] == "key004"
    assert doubt["prompt"] == "a lighthouse, variant 4"
    assert doubt["sent_at"].endswith("Z")

    audit = json.loads(cli("audit", "--db", url, "--format", "json").stdout)
    assert audit["total_credits_refunded"] == refunded_on_server
    assert audit["total_credits_net"] == 0
    assert audit["items_in_doubt"] == 1

    second = cli(*args, env=env)
    assert second.exit_code == 0, second.output
    assert "refunds found: 0 (0 credits)" in second.stdout
    assert "4 project(s) polled: error 4" in second.stdout
    assert "nightly key004" in second.stdout  # the in-doubt table names it
    for result in (first, second):
        assert SECRET not in result.stdout + result.stderr


def test_reconcile_exit_codes(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    sandbox = make_sandbox(key=SECRET, poll_error_rate=1.0)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    seed_from_sandbox(url, sandbox, created=2, lost=0)
    args = ("reconcile", "nightly", "--db", url, "--base-url", sandbox.base_url)

    no_key = cli(*args)
    assert no_key.exit_code == 2
    assert "MAGIC_HOUR_API_KEY" in no_key.stderr

    wrong = cli(*args, env={"MAGIC_HOUR_API_KEY": "wrong-key-but-long-enough"})
    assert wrong.exit_code == 2
    assert "401" in wrong.stderr

    unknown = cli(
        "reconcile",
        "nope",
        "--db",
        url,
        "--base-url",
        sandbox.base_url,
        env={"MAGIC_HOUR_API_KEY": SECRET},
    )
    assert unknown.exit_code == 2
    assert "no batch named 'nope'" in unknown.stderr

    with retry.instant():  # every poll answers 5xx: retried to the end, without the waits
        failing = cli(*args, env={"MAGIC_HOUR_API_KEY": SECRET})
    assert failing.exit_code == 1
    assert "could not poll" in failing.stderr
    for result in (no_key, wrong, unknown, failing):
        assert SECRET not in result.stdout + result.stderr


# --------------------------------------------------------------------------- account


def test_account_shows_balance_and_tier(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(key=SECRET, tier="pro", credits=4321)
    env = {"MAGIC_HOUR_API_KEY": SECRET, "MAGIC_HOUR_BASE_URL": sandbox.base_url}

    as_json = cli("account", "--json", env=env)
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    assert document["tier"] == "pro"
    assert document["credits"] == 4321
    assert document["email"] == "sandbox@example.com"
    assert document["id"]

    text = cli("account", "--base-url", sandbox.base_url, env={"MAGIC_HOUR_API_KEY": SECRET})
    assert text.exit_code == 0, text.output
    assert "4,321" in text.stdout and "pro" in text.stdout  # numbers as everywhere: 1,535
    for result in (as_json, text):
        assert SECRET not in result.stdout + result.stderr


def test_account_needs_a_good_key(make_sandbox: MakeSandbox) -> None:
    sandbox = make_sandbox(key=SECRET)
    missing = cli("account", "--base-url", sandbox.base_url)
    assert missing.exit_code == 2
    assert "MAGIC_HOUR_API_KEY" in missing.stderr
    wrong_key = "mhk_wrong_key_that_is_long"
    wrong = cli("account", "--base-url", sandbox.base_url, env={"MAGIC_HOUR_API_KEY": wrong_key})
    assert wrong.exit_code == 2
    assert wrong_key not in wrong.stdout + wrong.stderr


# --------------------------------------------------------------------------- the whole story


def test_a_run_that_did_not_wait_then_reconcile_then_audit(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """`run --no-wait` ends before the renders; they fail and are refunded later;
    `reconcile` finds every refund, and `audit` then shows what was really spent."""
    sandbox = make_sandbox(key=SECRET, render_error_rate=1.0, render_seconds=0.5)
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: late-refunds\n"
        "defaults: {model: z-image-turbo, resolution: 640px, image_count: 1}\n"
        "prompts:\n"
        '  - "a red bicycle"\n'
        '  - "a lighthouse in a storm"\n'
        '  - prompt: "a fox logo"\n'
        "    image_count: 2\n",
        encoding="utf-8",
    )
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {
        "PATH": "/usr/bin:/bin",
        "MAGIC_HOUR_API_KEY": SECRET,
        "MAGIC_HOUR_BASE_URL": sandbox.base_url,
        "BATCHER_DATABASE_URL": db,
    }

    def batcher(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "batcher", *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
            env=env,
            timeout=120,
        )

    ran = batcher("run", str(job), "--no-wait")
    assert ran.returncode == 0, ran.stderr
    before = json.loads(batcher("audit", "--format", "json").stdout)
    assert before["total_credits_refunded"] == 0
    wait_for_renders(sandbox)

    reconciled = batcher("reconcile", "late-refunds", "--json")
    assert reconciled.returncode == 0, reconciled.stderr
    document = json.loads(reconciled.stdout)
    journal = sandbox.journal()
    assert len(journal) == 3
    assert document["refunds_found"] == 3
    assert document["credits_refunded"] == sum(e.credits_refunded for e in journal)

    after = json.loads(batcher("audit", "--format", "json", "--by", "model").stdout)
    assert after["total_credits_charged"] == sum(e.credits_charged for e in journal)
    assert after["total_credits_refunded"] == sum(e.credits_refunded for e in journal)
    assert after["total_credits_net"] == 0
    [row] = after["rows"]
    assert (row["model"], row["failures"], row["images"]) == ("z-image-turbo", 3, 0)

    again = batcher("reconcile", "late-refunds", "--json")
    assert json.loads(again.stdout)["refunds_found"] == 0
    for result in (ran, reconciled, again):
        assert SECRET not in result.stdout + result.stderr
