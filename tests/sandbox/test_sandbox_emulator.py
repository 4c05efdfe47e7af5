"""The emulator's rules driven directly with a fake clock: no server, no sleeping."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import ImageFont
from sandbox_support import body

from batcher.jobfile.catalog import packaged_catalog_path
from batcher.sandbox import HONEST, SandboxConfig
from batcher.sandbox.config import parse_retry_after
from batcher.sandbox.emulator import Emulator, ImageJob, Reply
from batcher.sandbox.images import ImageRenderer, wrap


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.epoch = 1_767_225_600.0  # 2026-01-01T00:00:00Z

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.epoch + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def emulator(clock: FakeClock, **config: Any) -> Emulator:
    settings: dict[str, Any] = {"render_seconds": 10.0, "render_jitter": 0.0, **config}
    return Emulator(SandboxConfig(**settings), clock=clock)


def send(emu: Emulator, **overrides: Any) -> Reply:
    return emu.create(json.dumps(body(**overrides)).encode())


def created_id(reply: Reply) -> str:
    assert reply.status == 200, reply.body
    project_id: str = json.loads(reply.body)["id"]
    return project_id


def project(emu: Emulator, project_id: str) -> dict[str, Any]:
    reply = emu.project(project_id, "sandbox.test")
    assert reply.status == 200
    document: dict[str, Any] = json.loads(reply.body)
    return document


def test_a_render_is_queued_then_rendering_then_complete(clock: FakeClock) -> None:
    emu = emulator(clock)
    project_id = created_id(send(emu, image_count=2, model="flux-schnell"))
    assert project(emu, project_id)["status"] == "queued"
    clock.advance(2.6)  # past the queued quarter of 10 s
    assert project(emu, project_id)["status"] == "rendering"
    assert project(emu, project_id)["downloads"] == []
    clock.advance(7.4)
    document = project(emu, project_id)
    assert document["status"] == "complete"
    assert len(document["downloads"]) == 2
    assert document["error"] is None
    assert document["created_at"] == "2026-01-01T00:16:40.000Z"


def test_a_failed_render_is_refunded_when_it_finishes(clock: FakeClock) -> None:
    emu = emulator(clock, render_error_rate=1.0, credits=100)
    project_id = created_id(send(emu, model="krea-2"))
    assert emu.credits == 90
    clock.advance(9.9)
    assert emu.credits == 90
    assert project(emu, project_id)["credits_charged"] == 10
    clock.advance(0.1)
    assert emu.credits == 100  # settled by the clock, before anyone polls
    document = project(emu, project_id)
    assert document["status"] == "error"
    assert document["credits_charged"] == 0
    assert document["total_frame_cost"] == 0
    assert document["error"] == {
        "code": "generation_failed",
        "message": document["error"]["message"],
    }
    assert document["downloads"] == []
    (entry,) = emu.journal()
    assert (entry.credits_charged, entry.credits_refunded, entry.status) == (10, 10, "error")
    stats = emu.stats()
    assert (stats.credits_charged, stats.credits_refunded, stats.in_flight) == (10, 10, 0)


@pytest.mark.parametrize(
    ("overrides", "credits"),
    [
        ({"model": "z-image-turbo", "image_count": 1}, 5),
        ({"model": "z-image-turbo", "image_count": 4, "resolution": "2k"}, 20),
        ({"model": "krea-2", "resolution": "1k"}, 10),
        ({"model": "nano-banana-2.1", "image_count": 9}, 450),
        ({"model": "nano-banana-pro", "image_count": 16, "resolution": "4k"}, 2400),
        ({"model": "default", "image_count": 3, "resolution": None}, 15),
        ({"model": "seedream", "resolution": "auto"}, 30),
        ({"model": None, "style": {"prompt": "p", "quality_mode": "pro"}}, 40),
    ],
)
def test_charge_is_the_from_price_times_image_count(
    clock: FakeClock, overrides: dict[str, Any], credits: int
) -> None:
    emu = emulator(clock)
    reply = send(emu, **overrides)
    document = json.loads(reply.body)
    assert document["credits_charged"] == credits
    assert document["frame_cost"] == credits
    assert emu.credits == 1_000_000 - credits


def test_charge_factor_rounds_up(clock: FakeClock) -> None:
    emu = emulator(clock, charge_factor=1.1)
    assert emu.charge_for("krea-2", "1k", 1) == 11  # 10 * 1.1 rounds to 11, not 12
    assert emu.charge_for("z-image-turbo", None, 1) == 6  # 5.5 -> 6
    assert emu.charge_for("nano-banana-2.1", "4k", 16) == 880


def test_resolution_multipliers_from_the_catalog(tmp_path: Path, clock: FakeClock) -> None:
    data = yaml.safe_load(packaged_catalog_path().read_text(encoding="utf-8"))
    data["models"]["gpt-image-2"]["resolution_multipliers"] = {"2k": 1.5, "4k": 2.5}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    emu = Emulator(SandboxConfig(catalog=str(path)), clock=clock)
    assert emu.charge_for("gpt-image-2", "640px", 2) == 100
    assert emu.charge_for("gpt-image-2", "2k", 2) == 150
    assert emu.charge_for("gpt-image-2", "4k", 1) == 125
    assert emu.charge_for("gpt-image-2", "auto", 1) == 50  # the server picks the lowest


def test_deprecated_fields_map_to_their_replacements(clock: FakeClock) -> None:
    emu = emulator(clock)
    project_id = created_id(
        send(
            emu,
            model=None,
            aspect_ratio=None,
            orientation="portrait",
            resolution=None,
            style={"prompt": "p", "quality_mode": "standard"},
        )
    )
    (entry,) = emu.journal()
    assert entry.model == "z-image-turbo"
    assert "model" not in entry.body  # the journal keeps the body as sent
    clock.advance(10.0)
    url = project(emu, project_id)["downloads"][0]["url"]
    path, _, query = url.removeprefix("http://sandbox.test/_sandbox/files/").partition("?")
    job = emu.download(path, query.encode())
    assert isinstance(job, ImageJob)
    assert job.aspect_ratio == "9:16"
    # An explicit model wins over quality_mode, aspect_ratio over orientation.
    send(emu, model="flux-schnell", style={"prompt": "p", "quality_mode": "pro"})
    assert emu.journal()[-1].model == "flux-schnell"


def test_max_in_flight_counts_queued_and_rendering_renders(clock: FakeClock) -> None:
    emu = emulator(clock, max_in_flight=2, retry_after=HONEST)
    created_id(send(emu))
    clock.advance(4.2)
    created_id(send(emu))
    refused = send(emu)
    assert refused.status == 429
    assert dict(refused.headers)[b"retry-after"] == b"6"  # the first finishes in 5.8 s
    assert emu.credits == 1_000_000 - 10  # the refusal charged nothing
    clock.advance(5.8)
    created_id(send(emu))


def test_rate_limit_is_a_token_bucket(clock: FakeClock) -> None:
    emu = emulator(clock, rate_limit=4.0, retry_after=HONEST)
    key = b"Bearer sandbox-key"
    assert [emu.admit(key) for _ in range(4)] == [None] * 4  # the burst
    refused = emu.admit(key)
    assert refused is not None
    assert refused.status == 429
    assert json.loads(refused.body) == {"message": "Too many requests"}
    assert dict(refused.headers)[b"retry-after"] == b"1"  # 0.25 s, at least 1
    clock.advance(0.25)
    assert emu.admit(key) is None
    assert emu.admit(key) is not None
    clock.advance(10.0)  # refills to the burst, no more
    assert [emu.admit(key) for _ in range(5)].count(None) == 4


def test_slow_rate_limit_says_how_long_honestly(clock: FakeClock) -> None:
    emu = emulator(clock, rate_limit=0.2, retry_after=HONEST)
    assert emu.admit(b"Bearer sandbox-key") is None
    refused = emu.admit(b"Bearer sandbox-key")
    assert refused is not None
    assert dict(refused.headers)[b"retry-after"] == b"5"


def test_the_bearer_scheme_is_case_insensitive_and_the_key_exact(clock: FakeClock) -> None:
    emu = emulator(clock)
    assert emu.admit(b"bearer sandbox-key") is None
    assert emu.admit(b"Bearer  sandbox-key ") is None
    for header in (b"Bearer sandbox-keyx", b"Basic sandbox-key", b"sandbox-key", b"Bearer "):
        refusal = emu.admit(header)
        assert refusal is not None
        assert refusal.status == 401
    assert emu.admit(None) is not None


def test_the_same_seed_gives_the_same_faults_and_renders() -> None:
    def outcomes(seed: int) -> tuple[list[tuple[int, bool]], list[str]]:
        clock = FakeClock()
        emu = emulator(
            clock,
            seed=seed,
            error_rate=0.3,
            drop_rate=0.3,
            render_jitter=0.5,
            render_error_rate=0.5,
        )
        replies = [emu.create(json.dumps(body()).encode()) for _ in range(40)]
        clock.advance(9.0)  # between the shortest (5 s) and longest (15 s) render
        statuses = [entry.status for entry in emu.journal()]
        return [(reply.status, reply.drop) for reply in replies], statuses

    first = outcomes(7)
    assert first == outcomes(7)
    assert first != outcomes(8)
    answers = {status for status, _ in first[0]}
    assert {0, 200} <= answers  # 0: dropped
    assert answers & {500, 502, 503}
    assert {"complete", "error", "rendering"} <= set(first[1])


def test_render_times_are_jittered_within_bounds(clock: FakeClock) -> None:
    emu = emulator(clock, render_seconds=10.0, render_jitter=0.2, seed=1)
    ids = [created_id(send(emu)) for _ in range(50)]
    clock.advance(7.99)
    assert all(project(emu, i)["status"] == "rendering" for i in ids)
    clock.advance(4.02)
    assert all(project(emu, i)["status"] == "complete" for i in ids)


def test_ids_look_like_cuids_and_are_unique(clock: FakeClock) -> None:
    emu = emulator(clock)
    ids = [created_id(send(emu)) for _ in range(500)]
    assert len(set(ids)) == 500
    assert all(re.fullmatch(r"c[0-9a-z]{24}", i) for i in ids)


def test_download_urls_are_signed_and_expire(clock: FakeClock) -> None:
    emu = emulator(clock, download_ttl=60.0)
    project_id = created_id(send(emu, image_count=2, model="flux-schnell"))
    clock.advance(10.0)
    url = project(emu, project_id)["downloads"][1]["url"]
    path, _, query = url.removeprefix("http://sandbox.test/_sandbox/files/").partition("?")
    job = emu.download(path, query.encode())
    assert isinstance(job, ImageJob)
    assert (job.project_id, job.index, job.image_count) == (project_id, 1, 2)
    tampered = emu.download(path.replace("1.png", "0.png"), query.encode())
    assert isinstance(tampered, Reply)
    assert tampered.status == 403
    clock.advance(60.0)
    expired = emu.download(path, query.encode())
    assert isinstance(expired, Reply)
    assert expired.status == 403
    assert b"expired" in expired.body


def test_set_faults_checks_names_and_values(clock: FakeClock) -> None:
    emu = emulator(clock)
    assert emu.set_faults({"error_rate": 1, "retry_after": True})["retry_after"] == HONEST
    assert emu.config.error_rate == 1.0
    with pytest.raises(ValueError, match="error_rate"):
        emu.set_faults({"error_rate": 2})
    with pytest.raises(ValueError, match="credits: cannot be changed"):
        emu.set_faults({"credits": 5})
    with pytest.raises(ValueError, match="bogus: unknown setting"):
        emu.set_faults({"bogus": 1})
    with pytest.raises(ValueError, match="tier"):
        emu.set_faults({"tier": "gold"})
    emu.reset_faults()
    assert emu.config.error_rate == 0.0
    assert emu.config.retry_after is None


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"render_error_rate": -0.1}, "render_error_rate"),
        ({"latency": float("nan")}, "latency"),
        ({"rate_limit": 0}, "rate_limit"),
        ({"charge_factor": 0}, "charge_factor"),
        ({"max_in_flight": -1}, "max_in_flight"),
        ({"port": 70000}, "port"),
        ({"credits": True}, "credits"),
        ({"retry_after": "soon"}, "retry_after"),
        ({"key": ""}, "key"),
    ],
)
def test_config_rejects_bad_values(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SandboxConfig(**settings)


def test_retry_after_setting_parses_flags_and_json() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("") == HONEST
    assert parse_retry_after("honest") == HONEST
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(3) == 3.0
    assert parse_retry_after("off") is None


def test_the_key_never_shows_in_repr() -> None:
    assert "secret-key-123" not in repr(SandboxConfig(key="secret-key-123"))


def test_images_show_the_prompt_and_are_cached() -> None:
    renderer = ImageRenderer(cache_size=2)
    job = ImageJob("cabc", 0, 1, "A lighthouse " * 200, "16:9", "default")
    first = renderer.png(job)
    assert first.startswith(b"\x89PNG\r\n\x1a\n")
    assert renderer.png(job) is first


def test_wrap_cuts_words_longer_than_a_line() -> None:
    font = ImageFont.load_default(size=22)
    lines = wrap("short " + "x" * 300 + " tail", font, 200)
    assert lines[0] == "short"
    assert all(font.getlength(line) <= 200 for line in lines)
    assert "".join(lines[1:-1]) + lines[-1].removesuffix(" tail") == "x" * 300
    assert len(wrap("word " * 10_000, font, 200)) == 40


def test_changing_another_fault_keeps_the_rate_bucket(clock: FakeClock) -> None:
    emu = emulator(clock, rate_limit=1.0)
    assert emu.admit(b"Bearer sandbox-key") is None
    emu.set_faults({"latency": 0.01})
    assert emu.admit(b"Bearer sandbox-key") is not None  # still empty
    emu.set_faults({"rate_limit": 2.0})  # a new limit starts full
    assert emu.admit(b"Bearer sandbox-key") is None


def test_a_surcharge_is_charged_when_the_render_completes(clock: FakeClock) -> None:
    emu = emulator(clock, surcharge_rate=1.0, credits=1000)
    project_id = created_id(send(emu, model="krea-2"))
    assert emu.credits == 990
    clock.advance(9.9)
    assert project(emu, project_id)["credits_charged"] == 10
    clock.advance(0.1)
    assert emu.credits == 900  # settled by the clock, before anyone polls
    assert project(emu, project_id)["credits_charged"] == 100
    (entry,) = emu.journal()
    assert (entry.credits_charged, entry.credits_surcharged, entry.credits_net) == (10, 90, 100)
    assert entry.as_dict()["credits_net"] == 100


def test_stuck_renders_never_settle_and_keep_their_slot(clock: FakeClock) -> None:
    emu = emulator(clock, stuck_rate=1.0)
    project_id = created_id(send(emu))
    clock.advance(10**9)
    assert project(emu, project_id)["status"] == "rendering"
    assert emu.stats().in_flight == 1


def test_new_faults_left_off_draw_nothing_from_the_seeded_streams() -> None:
    def statuses(**extra: Any) -> list[str]:
        clock = FakeClock()
        emu = emulator(clock, seed=3, render_error_rate=0.5, render_jitter=0.5, **extra)
        for _ in range(30):
            send(emu)
        clock.advance(9.0)
        return [entry.status for entry in emu.journal()]

    assert statuses() == statuses(stuck_rate=0.0, cancel_rate=0.0, surcharge_rate=0.0)


@pytest.mark.parametrize("tier", ["free", "creator", "pro", "business"])
def test_the_account_has_the_sdk_shape(clock: FakeClock, tier: str) -> None:
    emu = emulator(clock, tier=tier)
    document = json.loads(emu.account().body)
    assert set(document) == {"id", "email", "credits", "tier", "subscription"}
    if tier == "free":
        assert document["subscription"] is None
        return
    subscription = document["subscription"]
    assert set(subscription) == {
        "billing_interval",
        "cancel_at_period_end",
        "current_period_end",
        "discount",
        "name",
        "price",
        "status",
    }
    assert set(subscription["price"]) == {"amount", "currency"}
    assert subscription["status"] == "active"
    assert subscription["current_period_end"] == "2026-01-31T00:16:40.000Z"  # 30 days on


def test_the_journal_shows_each_garbled_answer_and_its_charge(clock: FakeClock) -> None:
    emu = emulator(clock, create_garble="negative-credits")
    reply = send(emu)
    assert json.loads(reply.body)["credits_charged"] == -5
    (entry,) = emu.journal()
    assert (entry.garbled, entry.credits_charged) == ("negative-credits", 5)
    assert emu.credits == 1_000_000 - 5
