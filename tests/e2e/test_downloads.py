"""The download path, end to end against the sandbox: every image checked and
put in place with its provenance, held against what the server really sent
(its journal and its own renderer); bad downloads never end `complete`.

The independent check of issue 13: for every file, the pixels and the hash of
what was downloaded, and the PNG's `parameters` chunk, from the journal.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from e2e_support import assert_exactly_once, prompts
from PIL import Image

from batcher.ledger import FAILURE_DOWNLOAD
from batcher.run.provenance import EXTENSIONS, OWN_KEYWORDS, insert_png_text
from batcher.sandbox.emulator import DOWNLOAD_FORMATS, ImageJob
from batcher.sandbox.images import render_image

MakeBatch = Any

MIXED = [
    {"prompt": "A red bicycle on a beach", "image_count": 2},
    {"prompt": "A lighthouse, oil painting", "aspect_ratio": "16:9"},
    {"prompt": "Tiny kitchen, morning light", "aspect_ratio": "9:16", "model": "flux-schnell"},
    {"prompt": "A fox logo, flat shapes", "image_count": 3, "model": "flux-schnell"},
    {"prompt": "Lemons and leaves, pattern"},
]


def served(journal: list[Any], number: int, index: int, fmt: str) -> bytes:
    """The exact bytes the sandbox served for image `index` of its `number`th project."""
    entry = journal[number]
    if fmt == "mixed":
        fmt = DOWNLOAD_FORMATS[(number + index) % len(DOWNLOAD_FORMATS)]
    job = ImageJob(
        entry.id,
        index,
        entry.image_count,
        entry.body["style"]["prompt"],
        entry.body.get("aspect_ratio", "1:1"),
        entry.model,
        image_format=fmt,
    )
    return render_image(job)


def manifest(out: Path) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return {line["key"]: line for line in lines}


def pixels(data: bytes) -> tuple[tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size, image.convert("RGBA").tobytes()


def image_format(data: bytes) -> str | None:
    with Image.open(io.BytesIO(data)) as image:
        return image.format


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def without_provenance(data: bytes) -> bytes:
    """The PNG with our two chunks taken out again: what was downloaded."""
    out = io.BytesIO()
    insert_png_text(io.BytesIO(data), out, [])
    return out.getvalue()


def text_chunks(path: Path) -> Mapping[str, str]:
    with Image.open(path) as image:
        return dict(getattr(image, "text", {}))


def test_every_file_matches_what_the_server_sent(make_batch: MakeBatch) -> None:
    batch = make_batch(MIXED, job={"defaults": {"model": "z-image-turbo"}}, image_format="mixed")
    out = batch.tmp / "out"
    summary = batch.run()
    assert summary.exit_code == 0, summary
    journal = batch.sandbox.journal()
    numbers = {entry.id: n for n, entry in enumerate(journal)}
    lines = manifest(out)
    with batch.ledger() as ledger:
        items = list(ledger.items(1))
    assert len(lines) == len(items) == len(MIXED)
    kinds: set[str] = set()
    for item in items:
        line = lines[item.key]
        entry = journal[numbers[line["project_id"]]]
        assert line["state"] == "complete"
        assert line["prompt"] == entry.body["style"]["prompt"] == item.prompt
        assert (line["aspect_ratio"], line["tool"]) == (
            item.settings.aspect_ratio,
            item.settings.tool,
        )
        assert line["credits_charged"] == entry.credits_charged
        assert line["credits_refunded"] == 0 and line["finished_at"] and line["vars"] == {}
        assert len(line["files"]) == entry.image_count == item.settings.image_count
        # The ledger keeps the same details as the manifest.
        assert [f.as_json() for f in item.file_details] == line["files"]
        for index, described in enumerate(line["files"]):
            path = Path(described["path"])
            data = path.read_bytes()
            original = served(journal, numbers[entry.id], index, "mixed")
            kind = image_format(original)
            assert kind is not None
            kinds.add(kind)
            # The extension comes from the bytes, whatever the URL said (.png).
            expected_kind = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}[kind]
            assert path.suffix == EXTENSIONS[expected_kind]
            assert described["sha256"] == hashlib.sha256(data).hexdigest()
            assert described["bytes"] == len(data) == path.stat().st_size
            assert (described["width"], described["height"]) == size_of(path)
            assert pixels(data) == pixels(original)
            if expected_kind != "png":
                assert data == original  # JPEG and WebP are moved into place untouched
                continue
            assert without_provenance(data) == original  # only our chunks were added
            chunks = text_chunks(path)
            assert set(chunks) >= OWN_KEYWORDS
            prompt_line, settings_line = chunks["parameters"].split("\n")
            assert prompt_line == entry.body["style"]["prompt"]
            assert f"Model: {entry.model}" in settings_line
            assert f"Image: {index + 1} of {entry.image_count}" in settings_line
            assert f"Project: {entry.id}" in settings_line
            assert f"Batch: {batch.name}" in settings_line and f"Item: {item.key}" in settings_line
            own = json.loads(chunks["batcher"])
            assert own["downloaded"] == {
                "sha256": hashlib.sha256(original).hexdigest(),
                "bytes": len(original),
            }
            assert (own["key"], own["project_id"], own["image"]) == (item.key, entry.id, index + 1)
    assert kinds == {"PNG", "JPEG", "WEBP"}
    assert not list(out.glob(".*.download")) and not list(out.glob(".*.part"))
    assert_exactly_once(batch)


def test_no_metadata_leaves_every_file_as_downloaded(make_batch: MakeBatch) -> None:
    batch = make_batch(MIXED, image_format="mixed")
    out = batch.tmp / "out"
    assert batch.run(metadata=False).exit_code == 0
    journal = batch.sandbox.journal()
    numbers = {entry.id: n for n, entry in enumerate(journal)}
    saved = 0
    for line in manifest(out).values():
        for index, described in enumerate(line["files"]):
            data = Path(described["path"]).read_bytes()
            assert data == served(journal, numbers[line["project_id"]], index, "mixed")
            assert described["sha256"] == hashlib.sha256(data).hexdigest()
            saved += 1
    assert saved == sum(p.get("image_count", 1) for p in MIXED)


@pytest.mark.parametrize("mode", ["empty", "short", "html", "empty-body", "huge"])
def test_a_bad_download_fails_the_item_and_resume_fetches_it_for_nothing(
    make_batch: MakeBatch, mode: str
) -> None:
    job_prompts = [*prompts(3), {"prompt": "two of them", "image_count": 2}]
    batch = make_batch(job_prompts, bad_downloads=mode, huge_download_bytes=3_000_000)
    out = batch.tmp / "out"
    summary = batch.run(max_image_bytes=1_000_000)
    assert summary.exit_code == 1
    assert summary.states["failed"] == 4 and summary.states["complete"] == 0, summary.states
    with batch.ledger() as ledger:
        items = list(ledger.items(1))
    for item in items:
        assert item.failure == FAILURE_DOWNLOAD and item.project_id is not None
        assert item.error_message is not None and "after 3 looks" in item.error_message
    reasons = " ".join(item.error_message or "" for item in items)
    expected = {
        "empty": "download URL(s) for",
        "short": "download URL(s) for",
        "html": "not a PNG, JPEG or WebP",
        "empty-body": "the body is empty",
        "huge": "1,000,000-byte cap",
    }[mode]
    assert expected in reasons, reasons
    # No image is saved, and nothing is left half-written in the folder.
    if mode != "short":
        assert summary.counters.images == 0
        assert not [p for p in out.iterdir() if p.suffix in (".png", ".jpg", ".webp")]
    assert not list(out.glob(".*.download")) and not list(out.glob(".*.part"))
    # Each project was polled again for fresh URLs before its item failed.
    assert batch.sandbox.emulator.stats().bad_download_gets >= 3 * len(job_prompts)
    lines = manifest(out)
    assert {line["state"] for line in lines.values()} == {"failed"}
    creates = len(batch.sandbox.journal())
    # The render was paid: `resume` polls it again (fresh URLs) and creates nothing.
    batch.sandbox.set_faults(bad_downloads=None)
    again = batch.run(resume=True)
    assert again.exit_code == 0 and again.states["complete"] == 4
    assert again.counters.sent == 0 and len(batch.sandbox.journal()) == creates
    assert again.counters.images == 5
    assert_exactly_once(batch)


def test_a_short_project_keeps_the_image_it_has(make_batch: MakeBatch) -> None:
    batch = make_batch([{"prompt": "three", "image_count": 3}], bad_downloads="short")
    summary = batch.run()
    assert summary.states["failed"] == 1
    assert summary.counters.images == 2  # images saved, not ordered
    with batch.ledger() as ledger:
        [item] = ledger.items(1)
    assert len(item.files) == 2 and all(Path(path).exists() for path in item.files)
    assert item.error_message is not None and "image 3 of 3" in item.error_message


def test_the_gallery_is_refreshed_at_the_end_of_a_run(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(3))
    out = batch.tmp / "out"
    summary = batch.run()
    assert summary.gallery == out / "index.html"
    page = summary.gallery.read_text()
    with batch.ledger() as ledger:
        keys = [item.key for item in ledger.items(1)]
    assert all(key in page for key in keys)
    assert len(list((out / ".thumbs").glob("*.jpg"))) == 3
    summary.gallery.unlink()
    skipped = batch.run(resume=True, gallery=False)
    assert skipped.gallery is None and not (out / "index.html").exists()


def test_a_run_without_downloads_leaves_no_gallery(make_batch: MakeBatch) -> None:
    batch = make_batch(prompts(2))
    summary = batch.run(download=False)
    assert summary.exit_code == 0 and summary.gallery is None
    assert summary.counters.images == 0  # rendered, not saved
    assert not (batch.tmp / "out" / "index.html").exists()
