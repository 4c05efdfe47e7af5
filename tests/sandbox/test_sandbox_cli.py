"""The real `batcher sandbox` command, as a subprocess."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from sandbox_support import CREATE, body, wait_status

from batcher.sandbox import SANDBOX_KEY


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`batcher sandbox --port 0 ...` running; its process and the URL it printed first."""
    command = [
        sys.executable,
        "-m",
        "batcher",
        "sandbox",
        "--port",
        "0",
        "--render-seconds",
        "0.05",
        "--credits",
        "500",
        "--retry-after",
        "--key",
        "my-own-secret-key",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_sandbox_command_prints_its_url_and_serves(
    served: tuple[subprocess.Popen[str], str],
) -> None:
    process, url = served
    assert url.startswith("http://127.0.0.1:")
    port = int(url.rsplit(":", 1)[1])
    assert port > 0
    with httpx.Client(
        base_url=url, headers={"Authorization": "Bearer my-own-secret-key"}, timeout=10
    ) as client:
        created = client.post(CREATE, json=body(model="krea-2"))
        assert created.status_code == 200
        assert created.json()["credits_charged"] == 10
        wait_status(client, created.json()["id"], "complete")
        assert client.get("/v1/account").json()["credits"] == 490
        faults = client.get("/_sandbox/faults").json()
        assert faults["retry_after"] == "honest"
        refused = httpx.get(
            url + "/v1/account", headers={"Authorization": f"Bearer {SANDBOX_KEY}"}, timeout=10
        )
        assert refused.status_code == 401
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert stdout == ""  # only the URL, read already
    assert url in stderr
    assert "my-own-secret-key" not in stderr  # a chosen key is never echoed
    assert "stopped" in stderr
    assert "Traceback" not in stderr


def test_sandbox_command_rejects_bad_settings() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "batcher", "sandbox", "--tier", "gold"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "tier" in result.stderr
    assert result.stdout == ""


def test_sandbox_help_names_every_fault_flag_and_endpoint() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "batcher", "sandbox", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "100"},
    )
    for flag in (
        "--poll-404-rate",
        "--surcharge-rate",
        "--stuck-rate",
        "--cancel-rate",
        "--bad-downloads",
        "--bad-download-rate",
        "--huge-download-bytes",
        "--create-garble",
        "--create-garble-rate",
        "--poll-garble",
        "--poll-garble-rate",
        "--drip-seconds",
        "--image-format",
        "--webhook-url",
        "--webhook-secret",
        "--webhook-drop-rate",
        "--webhook-duplicate-rate",
        "--webhook-foreign-rate",
        "--webhook-backoff",
        "--webhook-attempts",
        "MAGIC_HOUR_WEBHOOK_SECRET",
        "/_sandbox/webhooks",
        "/_sandbox/journal",
        "/_sandbox/stats",
        "magic-hour-event-signature",
    ):
        assert flag in result.stdout, flag
