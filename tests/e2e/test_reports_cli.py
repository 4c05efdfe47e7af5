"""`--metrics-file` and `--notify` through the real CLI against the sandbox: the
metrics file read mid-run and at the end, parsed with prometheus_client and
held against `status --json`, the audit and the server's journal; one
notification received by a local HTTP listener through Apprise's `json://`,
and a run unchanged when the notifier is down."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from e2e_support import batcher_command
from nightly_support import Cli
from prometheus_client.parser import text_string_to_metric_families

from batcher.ledger import STATES

METRIC_NAMES = {
    "batcher_items",
    "batcher_credits",
    "batcher_creates_total",
    "batcher_polls_total",
    "batcher_webhook_events_total",
    "batcher_run_duration_seconds",
    "batcher_run_last_exit_code",
    "batcher_run_last_finished_timestamp_seconds",
}


def read_metrics(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def assert_equal_to_status(samples: dict[Any, float], status: dict[str, Any], batch: str) -> None:
    for state in STATES:
        assert value(samples, "batcher_items", batch=batch, state=state) == status["states"].get(
            state, 0
        ), state
    for kind in ("charged", "refunded", "net"):
        assert (
            value(samples, "batcher_credits", batch=batch, kind=kind) == status[f"credits_{kind}"]
        ), kind


@pytest.mark.slow
def test_the_metrics_file_mid_run_and_at_the_end_equals_status_and_the_audit(
    cli: Callable[..., Cli],
) -> None:
    job = cli(count=4, render_seconds=4.0, render_jitter=0.0)
    metrics = job.tmp / "batcher.prom"
    env = {**job.env, "BATCHER_METRICS_EVERY_S": "0.1"}
    process = subprocess.Popen(
        batcher_command(
            "run", str(job.job), *job.common, *job.out, "--metrics-file", str(metrics), "-q"
        ),
        cwd=job.tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Mid-run: every create answered, no render finished yet.
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "no mid-run metrics"
            if metrics.exists():
                samples = read_metrics(metrics)
                if value(samples, "batcher_items", batch=job.name, state="submitted") == 4:
                    break
            time.sleep(0.05)
        assert_equal_to_status(samples, job.status(), job.name)
        assert value(samples, "batcher_creates_total", batch=job.name, outcome="created") == 4
        assert ("batcher_run_last_exit_code", (("batch", job.name),)) not in samples
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    families = {f.name for f in text_string_to_metric_families(metrics.read_text())}
    # The parser names counter families without `_total`.
    assert {name.removesuffix("_total") for name in METRIC_NAMES} == families
    samples = read_metrics(metrics)
    assert {name for name, _ in samples} == METRIC_NAMES  # exactly those: no `_created`
    status = job.status()
    assert_equal_to_status(samples, status, job.name)
    audit = job("audit", "--format", "json", "--db", job.db)
    totals = json.loads(audit.stdout)
    assert (
        value(samples, "batcher_credits", batch=job.name, kind="net") == totals["total_credits_net"]
    )
    journal = job.sandbox.journal()
    assert value(samples, "batcher_credits", batch=job.name, kind="charged") == sum(
        entry.credits_charged for entry in journal
    )
    assert value(samples, "batcher_polls_total", batch=job.name) >= 4
    assert value(samples, "batcher_webhook_events_total", batch=job.name) == 0
    assert value(samples, "batcher_run_last_exit_code", batch=job.name) == 0
    finished = value(samples, "batcher_run_last_finished_timestamp_seconds", batch=job.name)
    assert abs(finished - time.time()) < 60
    assert value(samples, "batcher_run_duration_seconds", batch=job.name) > 3
    assert not list(job.tmp.glob("batcher.prom.*")), "no temporary file left behind"


@pytest.mark.slow
def test_the_metrics_file_keeps_other_batches_and_a_bad_path_is_refused(
    cli: Callable[..., Cli],
) -> None:
    job = cli(count=2)
    metrics = job.tmp / "batcher.prom"
    assert job.run("--metrics-file", str(metrics)).returncode == 0
    other = job.tmp / "other"
    other.mkdir()
    second = Cli(other, job.sandbox, "second", 2)
    second.db = job.db
    second.common = ["--base-url", job.sandbox.base_url, "--db", job.db]
    assert second.run("--metrics-file", str(metrics)).returncode == 0
    samples = read_metrics(metrics)
    assert value(samples, "batcher_items", batch="nightly", state="complete") == 2
    assert value(samples, "batcher_items", batch="second", state="complete") == 2
    refused = job.run("--metrics-file", str(job.tmp / "no" / "such" / "m.prom"))
    assert refused.returncode == 2
    assert "--metrics-file" in refused.stderr and "Traceback" not in refused.stderr


# --------------------------------------------------------------------------- notify


class Listener:
    """A local HTTP server that keeps every POST body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/batcher"


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_one_notification_at_the_end_through_apprise_json(
    cli: Callable[..., Cli], listener: Listener
) -> None:
    job = cli(count=3, render_error_rate=1.0)
    done = job.run("--notify", listener.url, "--render-retries", "0", "--json")
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    [body] = listener.bodies  # exactly one
    assert "nightly" in body["title"]
    message = body["message"]
    assert "batch: nightly" in message
    assert "exit code: 1" in message
    assert "items: 3 (3 failed)" in message
    assert f"credits: {document['credits_net']:,} net" in message
    assert "gallery: " in message
    assert body["type"] == "failure"


def test_a_notifier_that_is_down_is_a_warning_and_changes_nothing(
    cli: Callable[..., Cli], listener: Listener
) -> None:
    job = cli(count=2)
    port = listener.port
    listener.server.shutdown()
    listener.server.server_close()  # nothing listens there now
    done = job.run("--notify", f"json://127.0.0.1:{port}/gone", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["exit_code"] == 0
    assert "warning: the notification was not sent" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_notify_url_is_refused_before_sending(cli: Callable[..., Cli]) -> None:
    job = cli(count=2)
    done = job.run("--notify", "nosuchscheme://token-12345")
    assert done.returncode == 2
    assert "--notify" in done.stderr and "token-12345" not in done.stderr
    assert job.sandbox.journal() == []


def test_notify_urls_repeat(cli: Callable[..., Cli], listener: Listener) -> None:
    job = cli(count=1)
    done = job.run("--notify", listener.url, "--notify", listener.url.replace("batcher", "b2"))
    assert done.returncode == 0, done.stderr
    assert len(listener.bodies) == 2  # one message, to each URL
