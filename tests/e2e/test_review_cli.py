"""`batcher gallery` and `batcher review` as a user runs them: real processes,
a batch run against the sandbox, the server stopped with Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from e2e_support import Batch, batcher_command, cli_env, prompts

from batcher.ledger import Ledger


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        batcher_command(*args), env=cli_env(), capture_output=True, text=True, timeout=60
    )


def ran(make_batch: object) -> Batch:
    batch: Batch = make_batch(prompts(3, image_count=2))  # type: ignore[operator]
    # No gallery at the end of the run: the tests here make the first one.
    result = batch.run(gallery=False)
    assert result.succeeded, result.states
    return batch


def test_gallery_writes_the_page_where_the_images_are(make_batch: object) -> None:
    batch = ran(make_batch)
    result = run_cli("gallery", "e2e", "--db", batch.db_url)
    assert result.returncode == 0, result.stderr
    # No --out: the folder the images were saved in, found from the ledger.
    assert Path(result.stdout.strip()) == batch.tmp / "out" / "index.html"
    assert "3 items, 6 images, 6 new thumbnails" in result.stderr
    page = (batch.tmp / "out" / "index.html").read_text()
    assert '"batch":"e2e"' in page


def test_unknown_batches_and_ledgers_are_input_errors(make_batch: object, tmp_path: Path) -> None:
    batch = ran(make_batch)
    for args in (
        ("gallery", "nope", "--db", batch.db_url),
        ("review", "nope", "--db", batch.db_url),
        ("review", "nope", "--db", batch.db_url, "--export", "json"),
        ("gallery", "e2e", "--db", f"sqlite:///{tmp_path / 'missing.db'}"),
    ):
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("error:"), result.stderr


def test_export_of_a_batch_nobody_reviewed_is_empty(make_batch: object) -> None:
    batch = ran(make_batch)
    exported = run_cli("review", "e2e", "--db", batch.db_url, "--export", "json")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout) == {
        "batch": "e2e",
        "reviews": [],
        "picked": 0,
        "rejected": 0,
    }
    as_csv = run_cli("review", "e2e", "--db", batch.db_url, "--export", "csv")
    assert as_csv.stdout.splitlines() == [
        "key,image,verdict,note,reviewed_at,prompt,model,resolution,aspect_ratio,tool,project_id,file"
    ]


def serve(batch: Batch, *flags: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        batcher_command("review", "e2e", "--db", batch.db_url, "--port", "0", *flags),
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    assert url.startswith("http://"), url
    return process, url


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    return stderr


def test_review_serves_until_ctrl_c_and_keeps_every_decision(make_batch: object) -> None:
    batch = ran(make_batch)
    process, url = serve(batch)
    try:
        assert url.startswith("http://127.0.0.1:") and "token" not in url
        with httpx.Client(base_url=url) as client:
            assert client.get("/").status_code == 200
            with Ledger.open(batch.db_url) as ledger:
                key = next(iter(ledger.items(1))).key
            answer = client.post(
                "/api/reviews", json={"key": key, "image": 1, "verdict": "reject", "note": None}
            )
            assert answer.status_code == 200, answer.text
    finally:
        stderr = stop(process)
    assert "Traceback" not in stderr
    exported = json.loads(run_cli("review", "e2e", "--db", batch.db_url, "--export", "json").stdout)
    assert [(r["key"], r["image"], r["verdict"]) for r in exported["reviews"]] == [
        (key, 2, "reject")
    ]


def test_review_off_loopback_prints_a_token_and_refuses_without_it(make_batch: object) -> None:
    batch = ran(make_batch)
    process, url = serve(batch, "--host", "0.0.0.0")
    try:
        parts = urlsplit(url)
        [token] = parse_qs(parts.query)["token"]
        local = f"http://127.0.0.1:{parts.port}"
        assert httpx.get(f"{local}/").status_code == 403
        assert httpx.get(f"{local}/", params={"token": token}).status_code == 200
    finally:
        stop(process)
