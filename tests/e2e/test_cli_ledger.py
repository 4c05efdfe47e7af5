"""`batcher status`, `batcher items` and `batcher db upgrade` through the real
command line, over ledgers written by real runs against the sandbox; and how
the CLI maps what goes wrong to a message and an exit code.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from e2e_support import Batch, batcher_command, cli_env, prompts
from sqlalchemy import create_engine, inspect

import batcher
from batcher.cli import main
from batcher.ledger import STATES, migrate
from batcher.ledger.models import Base

MakeBatch = Callable[..., Batch]

STATUS_KEYS = [
    "name",
    "id",
    "items",
    "states",
    "credits_charged",
    "credits_refunded",
    "credits_net",
]
ITEM_KEYS = [
    "key",
    "state",
    "prompt",
    "model",
    "resolution",
    "image_count",
    "vars",
    "name",
    "project_id",
    "credits_charged",
    "credits_refunded",
    "credits_net",
    "files",
    "file_details",
    "reason",
    "resume_with",
]
LONG_NAME = "nightly-products-for-the-autumn-catalogue-with-a-very-long-batch-name"


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAGIC_HOUR_API_KEY", "MAGIC_HOUR_BASE_URL", "BATCHER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def mixed(make_batch: MakeBatch) -> Batch:
    """Two prompts complete, two refused by the free tier (403), one long prompt."""
    long_prompt = "a very long prompt " * 12 + "that ends here"
    batch = make_batch(
        [*prompts(2), *prompts(2, model="seedream-v4"), long_prompt],
        job={"name": LONG_NAME},
        tier="free",
    )
    summary = batch.run()
    assert summary.exit_code == 1
    assert {k: v for k, v in summary.states.items() if v} == {"complete": 3, "failed": 2}
    return batch


# --------------------------------------------------------------------------- status


def test_status_json_has_the_documented_shape_and_the_ledgers_figures(mixed: Batch) -> None:
    result = cli("status", "--json", "--db", mixed.db_url)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    [row] = json.loads(result.stdout)["batches"]
    assert list(row)[: len(STATUS_KEYS)] == STATUS_KEYS
    assert row["name"] == LONG_NAME
    assert row["items"] == 5
    assert row["states"] == {state: {"complete": 3, "failed": 2}.get(state, 0) for state in STATES}
    charged = sum(entry.credits_charged for entry in mixed.sandbox.journal())
    assert row["credits_charged"] == charged == 15
    assert row["credits_refunded"] == 0
    assert row["credits_net"] == charged
    # The library gives the same figures, as values.
    [library_row] = batcher.status(db=mixed.db_url)
    assert library_row.name == LONG_NAME and dict(library_row.states) == row["states"]
    assert library_row.credits_net == row["credits_net"]


def test_status_text_piped_is_plain_and_whole(mixed: Batch) -> None:
    done = subprocess.run(
        batcher_command("status", "--db", mixed.db_url),
        capture_output=True,
        text=True,
        env=cli_env(COLUMNS="60"),
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "batches"
    assert lines[1].split() == ["batch", "items", *STATES, "charged", "refunded", "net", "budget"]
    assert lines[2].split() == [LONG_NAME, "5", "0", "0", "0", "0", "3", "2", "15", "0", "15"]
    assert "…" not in done.stdout and "\x1b" not in done.stdout
    assert not any(char in done.stdout for char in "┃│┏━"), "no box when piped"
    assert all(line == line.rstrip() for line in lines)


def test_status_of_a_missing_ledger_says_so_and_shows_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "never.db"
    text = cli("status", "--db", f"sqlite:///{missing}")
    assert text.exit_code == 0
    assert text.stderr.startswith(f"warning: no ledger at sqlite:///{missing} yet")
    assert "no batches in the ledger yet" in text.stderr
    as_json = cli("status", "--json", "--db", f"sqlite:///{missing}")
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout) == {"batches": []}
    assert not missing.exists(), "a report never creates a ledger"
    report = batcher.status(db=f"sqlite:///{missing}")
    assert not report.ledger_found and list(report) == []
    # Asking for one batch of it is bad input.
    named = CliRunner().invoke(main, ["status", "x", "--db", f"sqlite:///{missing}"])
    assert named.exit_code == 2
    assert "no batch named 'x'" in named.stderr


# --------------------------------------------------------------------------- items


def test_items_json_gives_every_item_with_the_reason_of_each_failure(mixed: Batch) -> None:
    result = cli("items", LONG_NAME, "--json", "--db", mixed.db_url)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["batch"] == LONG_NAME and document["state"] is None
    rows = document["items"]
    assert len(rows) == 5
    assert all(list(row) == ITEM_KEYS for row in rows)
    journal = {entry.id: entry for entry in mixed.sandbox.journal()}
    for row in rows:
        if row["state"] == "complete":
            assert row["reason"] is None and row["resume_with"] is None
            assert row["credits_charged"] == journal[row["project_id"]].credits_charged
            assert row["files"] and all((Path(f)).exists() for f in row["files"])
            # The ledger keeps each file's hash, size and dimensions (no manifest needed).
            assert [d["path"] for d in row["file_details"]] == row["files"]
            assert all(d["sha256"] and d["bytes"] and d["width"] for d in row["file_details"])
        else:
            assert row["state"] == "failed" and row["model"] == "seedream-v4"
            assert row["project_id"] is None and row["credits_net"] == 0 and row["files"] == []
            assert row["reason"].startswith("refused by the API (HTTP 403: ")
            assert row["resume_with"] == "resume --retry-failed"
    failed = cli("items", LONG_NAME, "--state", "failed", "--json", "--db", mixed.db_url)
    assert [row["state"] for row in json.loads(failed.stdout)["items"]] == ["failed"] * 2


def test_items_piped_print_whole_prompts_and_reasons(mixed: Batch) -> None:
    result = cli("items", LONG_NAME, "--db", mixed.db_url)
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    assert "a very long prompt " * 12 + "that ends here" in result.stdout
    [refusal] = {
        item.reason for item in batcher.items(LONG_NAME, "failed", db=mixed.db_url) if item.reason
    }
    assert result.stdout.count(refusal) == 2


def test_items_of_a_dropped_answer_say_it_is_in_doubt(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(2), drop_rate=1.0)
    summary = batch.run()
    assert summary.states["unconfirmed"] == 2 and summary.exit_code == 1
    report = batcher.items("e2e", "unconfirmed", db=batch.db_url)
    assert len(report) == 2
    for item in report:
        assert item.reason is not None and item.reason.startswith("in doubt: sent, but the answer")
        assert repr(item.name) in item.reason  # the name to look for in the web library
        assert item.resume_with == "resume --resend-unconfirmed"


def test_items_refuse_an_unknown_state_or_batch(mixed: Batch, tmp_path: Path) -> None:
    bad_state = CliRunner().invoke(main, ["items", LONG_NAME, "--state", "lost"])
    assert bad_state.exit_code == 2
    unknown = CliRunner().invoke(main, ["items", "nope", "--db", mixed.db_url])
    assert unknown.exit_code == 2
    assert unknown.stderr.startswith("error: no batch named 'nope' in the ledger")
    missing = CliRunner().invoke(main, ["items", "x", "--db", f"sqlite:///{tmp_path / 'no.db'}"])
    assert missing.exit_code == 2
    assert "no ledger at" in missing.stderr
    with pytest.raises(batcher.ConfigError, match="unknown state 'lost'"):
        batcher.items(LONG_NAME, "lost", db=mixed.db_url)


# --------------------------------------------------------------------------- db upgrade


@pytest.mark.parametrize(
    "empty_database_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
    indirect=True,
)  # fmt: skip
def test_db_upgrade_applies_every_pending_migration(empty_database_url: str) -> None:
    result = cli("db", "upgrade", "--db", empty_database_url)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("ledger ") and result.stderr.endswith(" is up to date\n")
    engine = create_engine(empty_database_url)
    try:
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
        # From the bottom again: `db upgrade` is what brings it back.
        migrate.downgrade(engine, "base")
        assert cli("db", "upgrade", "--db", empty_database_url).exit_code == 0
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- errors


@pytest.fixture
def broken_command() -> Iterator[None]:
    """A command whose code has a bug, added to the real group for one test."""

    @click.command(name="broken-for-test")
    def broken() -> None:
        raise RuntimeError("a bug the tests planted")

    main.add_command(broken)
    try:
        yield
    finally:
        main.commands.pop("broken-for-test")


@pytest.mark.usefixtures("broken_command")
def test_an_unexpected_error_is_one_line_and_exit_1() -> None:
    result = CliRunner().invoke(main, ["broken-for-test"])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: internal error: RuntimeError: a bug the tests planted "
        "(run again with --debug for the traceback)\n"
    )
    debug = CliRunner().invoke(main, ["--debug", "broken-for-test"])
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1] == (
        "error: internal error: RuntimeError: a bug the tests planted"
    )


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (batcher.ConfigError("bad setting"), 2),
        (batcher.AuthError(401, "key rejected"), 2),
        (batcher.LedgerError("ledger broken"), 1),
        (KeyboardInterrupt(), 130),
    ],
)
def test_errors_map_to_their_exit_codes(error: BaseException, code: int) -> None:
    @click.command(name="raises-for-test")
    def raises() -> None:
        raise error

    main.add_command(raises)
    try:
        result = CliRunner().invoke(main, ["raises-for-test"])
    finally:
        main.commands.pop("raises-for-test")
    assert result.exit_code == code
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ")
    assert "Traceback" not in result.stderr
