"""The webhook receiver (`--webhook-listen`) against the sandbox's real webhook:
events verified, stored once, settling renders with no polls; forged ones
refused; lost ones caught by the fallback polls; an event that beats the
create's answer to the ledger still settles its render once.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from e2e_support import (
    Batch,
    Watch,
    assert_exactly_once,
    batcher_command,
    cli_env,
    prompts,
    run_runner,
    write_job,
)

import batcher
from batcher.client.magic_hour import CreatedProject, MagicHourClient, ProjectStatus
from batcher.errors import ConfigError
from batcher.ledger import Ledger
from batcher.run import pacing
from batcher.run.batch_run import ImageApi
from batcher.run.webhook_verify import (
    FRESH_S,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
    verify,
)
from batcher.run.webhooks import WebhookListen

SECRET = "whsec_receiver_test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hooked_batch(make_batch: Any, count: int, *, secret: str = SECRET, **faults: Any) -> Batch:
    port = free_port()
    batch: Batch = make_batch(
        prompts(count),
        webhook_url=f"http://127.0.0.1:{port}/magic-hour/events",
        webhook_secret=secret,
        seed=7,
        **faults,
    )
    batch.port = port  # type: ignore[attr-defined]
    return batch


def run_hooked(batch: Batch, watch: Watch | None = None, **settings: Any) -> Any:
    """`batcher.run` with the receiver on, as the CLI calls it; the BatchRun kept."""
    watch = watch or Watch()
    summary = batcher.run(
        [batch.job],
        out=batch.tmp / "out",
        db=batch.db_url,
        base_url=batch.sandbox.base_url,
        preflight=False,
        webhook_listen=f"127.0.0.1:{batch.port}",  # type: ignore[attr-defined]
        env={"MAGIC_HOUR_API_KEY": batch.sandbox.key, "MAGIC_HOUR_WEBHOOK_SECRET": SECRET},
        observer=watch,
        **settings,
    )
    [run] = watch.runs
    return summary, run


def status_of(batch: Batch) -> Mapping[str, Any]:
    [row] = batcher.status(db=batch.db_url)
    return {"events": row.webhooks.events, "rejected": row.webhooks.rejected, "row": row}


# --------------------------------------------------------------------------- delivered


def test_every_event_delivered_means_no_polls_and_duplicates_and_foreign_change_nothing(
    make_batch: Any,
) -> None:
    batch = hooked_batch(make_batch, 20, webhook_duplicate_rate=1.0, webhook_foreign_rate=1.0)
    summary, run = run_hooked(batch)
    assert summary.exit_code == 0
    assert summary.states["complete"] == 20
    assert run.counters.polls == 0  # every render settled by its event
    assert run.counters.complete == 20  # each once, although each event came twice
    deliveries = batch.sandbox.webhooks()
    assert len([d for d in deliveries if d.foreign]) == 20
    assert all(d.state == "delivered" for d in deliveries)  # foreign ones got 200 too
    assert run.counters.webhook_events == len(deliveries)
    assert_exactly_once(batch)
    seen = status_of(batch)
    assert seen["events"] == 20  # the batch's own, not the foreign ones
    assert seen["rejected"] == 0
    assert seen["row"].webhooks.deliveries == 40
    files = sorted((batch.tmp / "out").rglob("*.png"))
    assert len(files) == 20


def test_an_errored_and_refunded_render_is_created_again_from_its_event(
    make_batch: Any,
) -> None:
    batch = hooked_batch(make_batch, 12, render_error_rate=0.3)
    summary, run = run_hooked(batch, render_retries=3)
    assert run.counters.polls == 0
    assert summary.states["complete"] + summary.states["failed"] == 12
    errored = [e for e in batch.sandbox.journal() if e.status == "error"]
    assert errored, "the seed gives some failed renders"
    assert summary.credits_refunded == sum(e.credits_refunded for e in errored)
    assert_exactly_once(batch)


# --------------------------------------------------------------------------- refused


def test_forged_events_get_401_and_change_nothing_the_fallback_polls_settle(
    make_batch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pacing, "FALLBACK_FIRST_S", 0.5)
    batch = hooked_batch(make_batch, 8, secret="whsec_not_the_accounts", webhook_attempts=1)
    summary, run = run_hooked(batch)
    assert summary.states["complete"] == 8
    deliveries = batch.sandbox.webhooks()
    assert len(deliveries) == 8
    assert {attempt.status for d in deliveries for attempt in d.attempts} == {401}
    assert run.counters.webhook_rejected == 8
    assert run.counters.webhook_events == 0
    assert run.counters.polls == 8  # one fallback poll each, after its first wait
    seen = status_of(batch)
    assert seen["events"] == 0
    assert seen["rejected"] == 8
    shown = subprocess.run(
        batcher_command("status", "--json", "--db", batch.db_url),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=True,
    )
    [row] = json.loads(shown.stdout)["batches"]
    assert row["webhooks"] == {"events": 0, "deliveries": 0, "rejected": 8}
    assert row["states"]["complete"] == 8  # the documented keys are all still there
    table = subprocess.run(
        batcher_command("status", "--db", batch.db_url),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=True,
    )
    assert "refused" in table.stdout
    assert_exactly_once(batch)


def test_lost_events_cost_a_fallback_poll_each_and_nothing_more(
    make_batch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pacing, "FALLBACK_FIRST_S", 2.0)
    batch = hooked_batch(make_batch, 20, webhook_drop_rate=0.3)
    summary, run = run_hooked(batch)
    assert summary.states["complete"] == 20
    dropped = [d for d in batch.sandbox.webhooks() if d.state == "dropped"]
    assert dropped, "the seed drops some events"
    assert run.counters.polls == len(dropped)
    assert_exactly_once(batch)


def test_the_receiver_refuses_what_is_forged_stale_or_unsigned_and_takes_the_rest(
    make_batch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deliveries made by hand to the receiver of a live run (the sandbox sends none)."""
    monkeypatch.setattr(pacing, "FALLBACK_FIRST_S", 1.0)
    batch = hooked_batch(make_batch, 3, webhook_attempts=1)
    batch.sandbox.set_faults(webhook_url=None)
    url = f"http://127.0.0.1:{batch.port}/any/path"  # type: ignore[attr-defined]
    answers: dict[str, int] = {}

    class Poke(Watch):
        async def follow(self, progress: Any) -> None:
            await super().follow(progress)
            body = json.dumps({"type": "image.completed", "payload": {"id": "foreign"}}).encode()
            now = int(time.time())
            cases = {
                "good": (str(now), signature(SECRET, str(now), body)),
                "forged": (str(now), signature("whsec_other", str(now), body)),
                "stale": (str(now - int(FRESH_S) - 5), signature(SECRET, str(now - 305), body)),
                "future": (str(now + int(FRESH_S) + 5), signature(SECRET, str(now + 305), body)),
                "unsigned": ("", ""),
            }
            async with httpx.AsyncClient() as client:
                for _ in range(100):  # the receiver starts beside the observer
                    try:
                        await client.get(url)
                        break
                    except httpx.ConnectError:
                        await asyncio.sleep(0.02)
                for name, (stamp, sig) in cases.items():
                    headers = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sig} if stamp else {}
                    answer = await client.post(url, content=body, headers=headers)
                    answers[name] = answer.status_code

    summary, run = run_hooked(batch, Poke())
    assert answers == {"good": 200, "forged": 401, "stale": 401, "future": 401, "unsigned": 401}
    assert summary.states["complete"] == 3
    assert run.counters.webhook_rejected == 4
    with Ledger.open(batch.db_url) as ledger:
        [stored] = ledger.webhook_events_after(0)
    assert stored.project_id == "foreign"  # kept, matched to nothing, counted for no batch
    assert status_of(batch)["events"] == 0
    assert_exactly_once(batch)


# --------------------------------------------------------------------------- early events


class SlowAnswers:
    """The client, with each create's answer held back after the server gave it: the
    render ends and its event arrives before the ledger hears of the project."""

    def __init__(self, real: MagicHourClient, hold: float) -> None:
        self._real = real
        self._hold = hold

    async def create_image(self, body: Mapping[str, Any]) -> CreatedProject:
        created = await self._real.create_image(body)
        await asyncio.sleep(self._hold)
        return created

    async def get_project(self, project_id: str) -> ProjectStatus:
        return await self._real.get_project(project_id)

    async def download(self, url: str, dest: Path) -> int:
        return await self._real.download(url, dest)


def test_an_event_before_the_creates_answer_is_recorded_settles_the_render_once(
    make_batch: Any,
) -> None:
    batch = hooked_batch(make_batch, 6, webhook_duplicate_rate=1.0)
    listen = WebhookListen("127.0.0.1", batch.port, SECRET)  # type: ignore[attr-defined]

    def client(real: MagicHourClient) -> ImageApi:
        return SlowAnswers(real, 0.5)

    result = run_runner(batch, client, webhook=listen)
    assert result.states["complete"] == 6
    assert result.counters.complete == 6
    assert result.counters.polls == 0
    for delivery in batch.sandbox.webhooks():  # every event came before its answer
        assert delivery.attempts[0].after < 0.5
    assert_exactly_once(batch)


# --------------------------------------------------------------------------- settings


def test_without_the_secret_nothing_is_sent(make_batch: Any) -> None:
    batch = hooked_batch(make_batch, 3)
    with pytest.raises(ConfigError, match="MAGIC_HOUR_WEBHOOK_SECRET"):
        batcher.run(
            [batch.job],
            db=batch.db_url,
            base_url=batch.sandbox.base_url,
            webhook_listen="127.0.0.1:0",
            env={"MAGIC_HOUR_API_KEY": batch.sandbox.key, "MAGIC_HOUR_WEBHOOK_SECRET": " "},
        )
    assert batch.sandbox.journal() == []


def test_a_port_in_use_is_refused_before_anything_is_sent(make_batch: Any) -> None:
    batch = hooked_batch(make_batch, 3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="cannot listen"):
            batcher.run(
                [batch.job],
                db=batch.db_url,
                base_url=batch.sandbox.base_url,
                preflight=False,
                webhook_listen=f"127.0.0.1:{port}",
                env={"MAGIC_HOUR_API_KEY": batch.sandbox.key, "MAGIC_HOUR_WEBHOOK_SECRET": "s"},
            )
    assert batch.sandbox.journal() == []


@pytest.mark.slow
def test_the_cli_needs_the_secret_and_the_sandbox_demo_needs_no_polls(tmp_path: Path) -> None:
    job = write_job(tmp_path, prompts(4))
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    listen = f"127.0.0.1:{free_port()}"
    refused = subprocess.run(
        batcher_command("run", str(job), "--sandbox", "--db", db, "--webhook-listen", listen),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert "MAGIC_HOUR_WEBHOOK_SECRET" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "ledger.db").exists()

    watch = Watch()
    summary = batcher.run(
        [job],
        sandbox=True,
        out=tmp_path / "out",
        db=db,
        webhook_listen=listen,
        env={"MAGIC_HOUR_WEBHOOK_SECRET": SECRET},
        observer=watch,
    )
    assert summary.exit_code == 0
    assert watch.runs[0].counters.polls == 0
    assert watch.runs[0].counters.webhook_events == 4


# --------------------------------------------------------------------------- shared ledger


class OtherWorker:
    """A receiver of another worker of the same ledger: it verifies and stores each
    event, and follows nothing itself."""

    def __init__(self, port: int, db_url: str) -> None:
        self._ledger = Ledger.open(db_url)
        config = uvicorn.Config(
            self, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        verdict = verify(headers, body, SECRET, now=time.time())
        status = 401 if verdict.refused else 200
        if verdict.event is not None:
            event = verdict.event
            self._ledger.record_webhook_event(
                event.type, event.project_id, event.payload, batch_id=None, worker_id="other"
            )
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def __enter__(self) -> OtherWorker:
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._ledger.close()


def test_an_event_another_worker_received_settles_the_render_here(
    make_batch: Any, ledger_url: str
) -> None:
    """The sandbox's events go to another worker's receiver; this worker listens
    elsewhere, gets none, and settles every render from the ledger, without a poll."""
    batch = hooked_batch(make_batch, 10)
    batch.db_url = ledger_url
    here = free_port()
    with Ledger.open(ledger_url):
        pass  # migrated before the other worker opens it
    with OtherWorker(batch.port, ledger_url):  # type: ignore[attr-defined]
        batch.port = here  # type: ignore[attr-defined]
        summary, run = run_hooked(batch)
    assert summary.states["complete"] == 10
    assert run.counters.polls == 0
    assert run.counters.webhook_events == 0  # nothing came to this worker's receiver
    assert status_of(batch)["events"] == 10
    assert_exactly_once(batch)


class BareEvents(SlowAnswers):
    """The client, and for each accepted create, once its render is surely done, a
    signed image.completed whose payload is the project id alone."""

    def __init__(self, real: MagicHourClient, url: str) -> None:
        super().__init__(real, 0.0)
        self._url = url
        self._posts: set[asyncio.Task[None]] = set()

    async def create_image(self, body: Mapping[str, Any]) -> CreatedProject:
        created = await super().create_image(body)
        task = asyncio.create_task(self._post_later(created.project_id))
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)
        return created

    async def _post_later(self, project_id: str) -> None:
        await asyncio.sleep(0.5)
        raw = json.dumps({"type": "image.completed", "payload": {"id": project_id}}).encode()
        stamp = str(int(time.time()))
        headers = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signature(SECRET, stamp, raw)}
        async with httpx.AsyncClient() as client:
            await client.post(self._url, content=raw, headers=headers)


def test_an_event_without_the_project_in_it_is_polled_at_once(
    make_batch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pacing, "FALLBACK_FIRST_S", 30.0)
    batch = hooked_batch(make_batch, 5)
    batch.sandbox.set_faults(webhook_url=None)  # only the bare events come
    listen = WebhookListen("127.0.0.1", batch.port, SECRET)  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{batch.port}/"  # type: ignore[attr-defined]
    started = time.monotonic()
    result = run_runner(batch, lambda real: BareEvents(real, url), webhook=listen)
    assert result.states["complete"] == 5
    assert result.counters.polls == 5  # one each, at the event, not at the fallback
    assert time.monotonic() - started < 20
    assert_exactly_once(batch)
