"""What cron, systemd and a monitoring stack get from the sending commands
(DESIGN.md, Nightly operations), through the real CLI against the sandbox:
`--json`, the summary on stdout, progress lines, logs, hints that work."""

from __future__ import annotations

import itertools
import json
import re
import shlex
import subprocess
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from e2e_support import batcher_command, cli_env, prompts, write_job
from nightly_support import DEADLINE_S, ISO_TIME, Cli
from test_cli_runs import ANSI, on_a_terminal

from batcher.sandbox import SandboxHandle

MakeSandbox = Callable[..., SandboxHandle]

JSON_KEYS = [
    "batch", "exit_code", "items", "states", "credits_charged", "credits_refunded",
    "credits_net", "started_at", "finished_at", "duration_s", "out", "manifest", "gallery",
]  # fmt: skip


# --------------------------------------------------------------------------- --json


def test_json_is_one_object_with_design_keys_equal_to_the_server(cli: Callable[..., Cli]) -> None:
    job = cli(count=5)
    done = job.run("--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)  # the whole of stdout: one object
    assert list(document) == JSON_KEYS
    journal = job.sandbox.journal()
    assert document["batch"] == "nightly"
    assert document["exit_code"] == 0
    assert document["items"] == 5
    assert {k: v for k, v in document["states"].items() if v} == {"complete": 5}
    assert document["credits_charged"] == sum(entry.credits_charged for entry in journal)
    assert document["credits_refunded"] == sum(entry.credits_refunded for entry in journal)
    assert document["credits_net"] == document["credits_charged"] - document["credits_refunded"]
    assert ISO_TIME.match(document["started_at"]) and ISO_TIME.match(document["finished_at"])
    assert document["duration_s"] > 0
    assert Path(document["manifest"]) == Path(document["out"]) / "manifest.jsonl"
    assert Path(document["gallery"]).is_file()
    status = job.status()
    for key in ("credits_charged", "credits_refunded", "credits_net", "items"):
        assert status[key] == document[key], key


def test_json_on_resume_and_with_failures_carries_exit_1(cli: Callable[..., Cli]) -> None:
    job = cli(count=3, render_error_rate=1.0)
    done = job.run("--json", "--render-retries", "0")
    assert done.returncode == 1
    document = json.loads(done.stdout)
    assert document["exit_code"] == 1 and document["states"]["failed"] == 3
    again = job("resume", job.name, *job.common, *job.out, "--json", "--render-retries", "0")
    assert again.returncode == json.loads(again.stdout)["exit_code"] == 1
    assert "failed" in again.stderr  # the hints stay on stderr


# --------------------------------------------------------------------------- summary


def test_the_summary_is_on_stdout_and_diagnostics_on_stderr(cli: Callable[..., Cli]) -> None:
    job = cli(count=4)
    done = job.run()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("batch nightly\n")
    assert "credits charged this run" in done.stdout
    assert "batch 'nightly' in" in done.stderr and "batch 'nightly' in" not in done.stdout


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_keeps_the_summary_as_one_line(cli: Callable[..., Cli], where: str) -> None:
    job = cli(count=4)
    args = ["run", str(job.job), *job.common, *job.out]
    done = job("-q", *args) if where == "before" else job(*args, "-q")
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert line.startswith("batch nightly: exit 0 · 4 items (4 complete) · ")
    assert "credits net" in line
    assert done.stderr == ""  # nothing but warnings and errors


# --------------------------------------------------------------------------- progress


def test_progress_off_a_terminal_is_a_plain_line_at_the_interval(
    cli: Callable[..., Cli],
) -> None:
    job = cli(count=8, render_seconds=1.0)
    done = job.run("--progress-interval", "0.3", "--concurrency", "2")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "batcher.terminal.progress" in line]
    assert len(lines) >= 3, done.stderr
    assert ANSI not in done.stderr and ANSI not in done.stdout
    # At the interval (the last line is the one at the end, whenever that is).
    times = [datetime.fromisoformat(line.split(" ", 1)[0]) for line in lines[:-1]]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
    assert gaps and all(0.25 <= gap <= 1.5 for gap in gaps), gaps
    for line in lines:
        when, level, _logger, text = line.split(" ", 3)
        assert ISO_TIME.match(when) and level == "INFO"
        assert re.match(r"nightly: \d+/8 \(\d+%\) · \d+ complete · \d+ failed · \d+ in doubt", text)
        assert re.search(r"· \d+ credits · ", text) and "items/s · ETA " in text


def test_the_default_interval_is_30_seconds(cli: Callable[..., Cli]) -> None:
    job = cli(count=3)
    done = job.run()
    assert done.returncode == 0, done.stderr
    # A 1 s run: no line at an interval, only the one at the end.
    [line] = [line for line in done.stderr.splitlines() if "batcher.terminal.progress" in line]
    assert "nightly: 3/3 (100%)" in line
    assert "30" in job("run", "--help").stdout.split("--progress-interval", 1)[1][:200]


def test_the_live_display_fits_80_columns_and_reaches_100_percent(
    tmp_path: Path, make_sandbox: MakeSandbox
) -> None:
    sandbox = make_sandbox(render_seconds=0.3)
    env = cli_env(TERM="xterm-256color", MAGIC_HOUR_API_KEY=sandbox.key)
    env.pop("NO_COLOR", None)
    env.pop("COLUMNS", None)
    job = write_job(tmp_path, prompts(6), name="a-rather-long-batch-name-for-80-columns")
    code, screen = on_a_terminal(
        "run", str(job), "--base-url", sandbox.base_url, cwd=tmp_path, env=env, columns=80
    )
    assert code == 0, screen
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert "6/6" in plain and "100%" in plain
    assert "6 done" in plain and "credits" in plain  # the counts line, whole
    assert "…" not in plain.split("batch a-rather")[0].replace("a-rather-long-b…", "")


def test_items_in_doubt_from_before_do_not_hold_the_bar_back(cli: Callable[..., Cli]) -> None:
    """A second run over a batch with items in doubt (not re-sent) counts only the
    items it settles: its last progress line says 100%."""
    job = cli(count=3, drop_rate=1.0)
    assert job.run().returncode == 1
    assert job.status()["states"]["unconfirmed"] == 3  # type: ignore[index]
    job.sandbox.emulator.set_faults({"drop_rate": 0.0, "render_seconds": 0.5})
    with_more = write_job(job.tmp, prompts(6), name=job.name)
    done = job("run", str(with_more), *job.common, *job.out, "--progress-interval", "0.1")
    assert done.returncode == 1, done.stderr  # the items in doubt are still there
    lines = [line for line in done.stderr.splitlines() if "batcher.terminal.progress" in line]
    assert lines, done.stderr
    assert "3/3 (100%)" in lines[-1], lines[-1]


# --------------------------------------------------------------------------- hints


def suggested(stderr: str) -> list[list[str]]:
    """Every command a hint suggests: `in backticks`, or after "Continue with:"."""
    commands = re.findall(r"`(batcher [^`]+)`", stderr)
    commands += [
        match.strip()
        for match in re.findall(r"Continue with: (batcher .+?)(?: \(N:|$)", stderr, re.M)
    ]
    return [shlex.split(command) for command in commands]


def hinted(stderr: str, *words: str) -> list[str]:
    """The one suggested command holding all `words`, as arguments after `batcher`."""
    [command] = [c for c in suggested(stderr) if all(word in c for word in words)]
    return command[1:]


@pytest.mark.slow
def test_a_budget_stop_hint_resumes_with_a_new_budget(cli: Callable[..., Cli]) -> None:
    job = cli(count=4)
    job.env["MAGIC_HOUR_BASE_URL"] = job.sandbox.base_url
    done = job("run", str(job.job), "--db", job.db, "--budget", "6")
    assert done.returncode == 1, done.stderr
    args = hinted(done.stderr, "resume", "--budget")
    assert args[args.index("--budget") + 1] == "N"
    args[args.index("--budget") + 1] = "1000"
    again = job(*args)
    assert again.returncode == 0, again.stderr
    assert job.status()["states"]["complete"] == 4  # type: ignore[index]


@pytest.mark.slow
def test_a_budget_stop_after_sandbox_says_sandbox(tmp_path: Path) -> None:
    job = write_job(tmp_path, prompts(3), name="sand")
    env = cli_env(BATCHER_RETRY_INSTANT="1")
    run = subprocess.run(
        batcher_command("run", str(job), "--sandbox", "--budget", "5"),
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=DEADLINE_S, check=False,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    args = hinted(run.stderr, "resume", "--budget")
    assert "--sandbox" in args
    args[args.index("--budget") + 1] = "1000"
    again = subprocess.run(
        batcher_command(*args),
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=DEADLINE_S, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr


@pytest.mark.slow
def test_failure_hints_show_why_and_resume_retries(cli: Callable[..., Cli]) -> None:
    job = cli(count=3, render_error_rate=1.0)
    job.env["MAGIC_HOUR_BASE_URL"] = job.sandbox.base_url
    done = job("run", str(job.job), "--db", job.db, "--render-retries", "0")
    assert done.returncode == 1
    why = job(*hinted(done.stderr, "items", "failed"))
    assert why.returncode == 0, why.stderr
    assert why.stdout.count("the render failed and was refunded") == 3
    job.sandbox.emulator.set_faults({"render_error_rate": 0.0})
    retried = job(*hinted(done.stderr, "resume"))
    assert retried.returncode == 0, retried.stderr
    # status points at items too, and that command works
    shown = job("status", "--db", job.db)
    assert "shows why" not in shown.stderr  # nothing failed any more
    assert job.status()["states"]["complete"] == 3  # type: ignore[index]


@pytest.mark.slow
def test_doubt_hints_list_them_ask_the_api_and_resend(cli: Callable[..., Cli]) -> None:
    job = cli(count=2, drop_rate=1.0)
    job.env["MAGIC_HOUR_BASE_URL"] = job.sandbox.base_url
    done = job("run", str(job.job), "--db", job.db)
    assert done.returncode == 1
    listed = job(*hinted(done.stderr, "items", "unconfirmed"))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("in doubt") >= 2, listed.stdout
    asked = job(*hinted(done.stderr, "reconcile"))
    assert asked.returncode in (0, 1), asked.stderr
    assert "Traceback" not in asked.stderr
    job.sandbox.emulator.set_faults({"drop_rate": 0.0})
    resent = job(*hinted(done.stderr, "--resend-unconfirmed"))
    assert resent.returncode == 0, resent.stderr
    status = job("status", "--db", job.db)
    assert "shows why" not in status.stderr


def test_status_points_at_items_for_why(cli: Callable[..., Cli]) -> None:
    job = cli(count=2, render_error_rate=1.0)
    assert job.run("--render-retries", "0").returncode == 1
    shown = job("status", "--db", job.db)
    assert shown.returncode == 0
    why = job(*hinted(shown.stderr, "items", "failed"))
    assert why.returncode == 0, why.stderr
    assert why.stdout.count("the render failed and was refunded") == 2


@pytest.mark.slow
def test_account_without_a_key_does_not_suggest_sandbox(tmp_path: Path) -> None:
    done = subprocess.run(
        batcher_command("account"),
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "MAGIC_HOUR_API_KEY" in done.stderr
    assert "--sandbox" not in done.stderr
    # `run` takes --sandbox, so its hint names it, and that works.
    job = write_job(tmp_path, prompts(1), name="nokey")
    run = subprocess.run(
        batcher_command("run", str(job)),
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 2 and "add --sandbox" in run.stderr
    sandboxed = subprocess.run(
        batcher_command("run", str(job), "--sandbox"),
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=DEADLINE_S,
        check=False,
    )  # fmt: skip
    assert sandboxed.returncode == 0, sandboxed.stderr
    # `worker` takes no --sandbox either.
    joined = subprocess.run(
        batcher_command("worker", "nokey"),
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert joined.returncode == 2 and "MAGIC_HOUR_API_KEY" in joined.stderr
    assert "--sandbox" not in joined.stderr


# --------------------------------------------------------------------------- items


@pytest.mark.slow
def test_items_json_gives_the_reason_for_refused_and_failed_items(
    cli: Callable[..., Cli],
) -> None:
    # Renders long enough that no refund comes back before all four creates are
    # answered: two are paid for, two refused (402), and the two paid fail.
    job = cli(count=4, credits=12, render_error_rate=1.0, render_seconds=1.0)
    done = job.run("--render-retries", "0", "--no-preflight", "--concurrency", "4")
    assert done.returncode == 1
    shown = job("items", job.name, "--json", "--db", job.db)
    assert shown.returncode == 0, shown.stderr
    items = json.loads(shown.stdout)["items"]
    assert len(items) == 4
    for item in items:
        assert {"key", "state", "prompt", "model", "project_id", "credits_charged", "files",
                "reason"} <= set(item)  # fmt: skip
    failed = [item for item in items if item["state"] == "failed"]
    assert failed and all(item["reason"] for item in failed)
    refused = [item for item in failed if item["project_id"] is None]
    rendered = [item for item in failed if item["project_id"] is not None]
    assert refused and rendered, items
    assert all("402" in item["reason"] for item in refused), refused
    assert all("render failed" in item["reason"] for item in rendered), rendered
    only = job("items", job.name, "--json", "--state", "failed", "--db", job.db)
    assert len(json.loads(only.stdout)["items"]) == len(failed)


# --------------------------------------------------------------------------- logs


def test_log_file_json_lines_carry_the_context_and_debug_shows_each_exchange(
    cli: Callable[..., Cli],
) -> None:
    job = cli(count=6, error_rate=0.3, seed=4)
    log_file = job.tmp / "run.jsonl"
    done = job.run("--log-file", str(log_file), "--log-format", "json", "--debug")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert records and all(ISO_TIME.match(r["time"]) for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    retries = [r for r in records if r.get("event") == "retry.create"]
    # Seed 4 at 0.3: the sandbox's first 12 create draws hold 3 errors, one among
    # the first 6 (so some create retries) and never 6 (so none gives up).
    assert retries, "error_rate 0.3, seed 4 makes a create retry"
    for record in retries:
        assert record["key"] and record["attempt"] >= 1 and record["wait"] >= 0
        assert record["status"] in (500, 502, 503)
    calls = [r for r in records if r.get("event") == "api.call"]
    creates = [r for r in calls if r["method"] == "POST"]
    polls = [r for r in calls if r["method"] == "GET" and "project_id" in r]
    assert creates and polls
    for record in creates:
        assert record["path"] == "/v1/ai-image-generator" and record["key"]
        assert isinstance(record["status"], int) and record["elapsed_ms"] >= 0
    for record in polls:
        assert record["key"] and record["project_id"] in record["path"]
    text = log_file.read_text() + done.stderr + done.stdout
    assert job.sandbox.key not in text and job.sandbox.key[:12] not in text
    # On stderr (no terminal): the same records as text, context after the message.
    lines = [line for line in done.stderr.splitlines() if "api call" in line]
    assert lines and all(ISO_TIME.match(line.split(" ", 1)[0]) for line in lines)
    assert any(re.search(r" key=\S+ POST /v1/ai-image-generator \d{3} [\d.]+ms", x) for x in lines)


def test_log_file_text_and_quiet_keeps_the_file_whole(cli: Callable[..., Cli]) -> None:
    job = cli(count=6, error_rate=0.3, seed=4)
    log_file = job.tmp / "run.log"
    done = job.run("--log-file", str(log_file), "-q")
    assert done.returncode == 0, done.stderr
    assert "retrying" not in done.stderr  # -q: INFO stays off the terminal
    logged = log_file.read_text().splitlines()
    retries = [line for line in logged if "retrying create" in line]
    assert retries and all(" key=" in line and " attempt=" in line for line in retries)
    assert any("batcher.terminal.progress" in line for line in logged)
    assert all(ISO_TIME.match(line.split(" ", 1)[0]) for line in logged)


def test_an_unwritable_log_file_is_refused_before_sending(cli: Callable[..., Cli]) -> None:
    job = cli(count=2)
    done = job.run("--log-file", str(job.tmp / "missing" / "run.log"))
    assert done.returncode == 2
    assert "--log-file" in done.stderr and "Traceback" not in done.stderr
    assert job.sandbox.journal() == []
