"""The gallery's pure parts: axes, reasons, the manifest reader, the page's
compact document and its escaping, and the thumbnails on disk."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from batcher.errors import ConfigError
from batcher.jobfile.items import ItemSettings
from batcher.ledger import ItemRecord
from batcher.reports import thumbnails
from batcher.reports.gallery_data import (
    GalleryData,
    GalleryFile,
    GalleryItem,
    GalleryReview,
    choose_axes,
    failure_reason,
    locate,
    page_path,
    read_manifest,
)
from batcher.reports.gallery_page import page_document, render_page


def item(key: str = "k", **fields: object) -> GalleryItem:
    values: dict[str, object] = {
        "key": key,
        "ordinal": 0,
        "state": "complete",
        "prompt": "p",
        "model": "z-image-turbo",
        "resolution": "1k",
        "aspect_ratio": "1:1",
        "tool": "general",
        "image_count": 1,
    }
    values.update(fields)
    return GalleryItem(**values)  # type: ignore[arg-type]


def record(**fields: object) -> ItemRecord:
    values: dict[str, object] = {
        "id": 1,
        "batch_id": 1,
        "key": "k",
        "ordinal": 0,
        "prompt": "p",
        "settings": ItemSettings("z-image-turbo", None, "1:1", "general", 1),
        "project_name": "b k",
        "estimate": 5,
        "estimate_exact": True,
        "state": "failed",
        "failure": None,
        "attempts": 1,
        "render_failures": 0,
        "project_id": None,
        "credits_reserved": 0,
        "error_status": None,
        "error_message": None,
        "files": (),
        "source_path": "job.yaml",
        "source_line": 3,
    }
    values.update(fields)
    return ItemRecord(**values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- axes


def test_axes_default_to_the_first_two_variables() -> None:
    items = [item("a", vars={"color": "red", "size": "s"}), item("b", vars={"shape": "x"})]
    assert choose_axes(items, None, None) == ("color", "size")
    assert choose_axes(items, "shape", None) == ("shape", "color")
    assert choose_axes(items, None, "color") == ("size", "color")
    assert choose_axes([item()], None, None) == (None, None)
    assert choose_axes([item()], "model", "aspect_ratio") == ("model", "aspect_ratio")


def test_an_axis_the_batch_lacks_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--cols flavour: not a variable or setting"):
        choose_axes([item(vars={"color": "red"})], None, "flavour")


def test_axis_values_come_from_variables_then_settings() -> None:
    it = item(vars={"model": "flux-schnell", "color": "red"}, image_count=4)
    assert it.axis_value("color") == "red"
    assert it.axis_value("model") == "flux-schnell"  # a matrix setting is also a variable
    assert it.axis_value("image_count") == "4"
    assert it.axis_value("nothing") is None


# --------------------------------------------------------------------------- reasons


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (
            {"failure": "refused", "error_status": 403, "error_message": "not on your plan"},
            "refused by the API: HTTP 403: not on your plan",
        ),
        (
            {"failure": "render", "error_message": "The image could not be generated."},
            "the render failed (refunded): The image could not be generated.",
        ),
        ({"failure": "download"}, "rendered, but the images could not be saved"),
        (
            {"state": "unconfirmed", "error_message": "timed out"},
            "in doubt: sent, but the answer was lost (it may have been charged): timed out",
        ),
        ({"state": "complete"}, None),
        ({"state": "pending"}, None),
    ],
)
def test_reasons_say_why(fields: dict[str, object], reason: str | None) -> None:
    assert failure_reason(record(**fields)) == reason


def test_the_manifest_error_fills_in_when_the_ledger_has_no_message() -> None:
    reason = failure_reason(record(failure="render"), "content_policy: refused")
    assert reason == "the render failed (refunded): content_policy: refused"


# --------------------------------------------------------------------------- manifest and paths


def test_the_latest_manifest_line_per_key_wins(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_text(
        '{"key": "a", "state": "failed"}\n'
        "not json, a line cut by a crash\n"
        '{"key": "b", "state": "complete"}\n'
        '{"key": "a", "state": "complete", "vars": {"c": "red"}}\n'
    )
    entries = read_manifest(path)
    assert entries["a"] == {"key": "a", "state": "complete", "vars": {"c": "red"}}
    assert set(entries) == {"a", "b"}
    assert read_manifest(tmp_path / "missing.jsonl") == {}


def test_files_are_found_in_the_batch_folder_wherever_the_run_was(tmp_path: Path) -> None:
    folder = tmp_path / "moved"
    folder.mkdir()
    (folder / "00001-a-k-1.png").write_bytes(b"x")
    found = locate("/elsewhere/out/00001-a-k-1.png", folder)
    assert found == (folder / "00001-a-k-1.png").absolute()
    assert page_path(folder, found) == "00001-a-k-1.png"
    outside = tmp_path / "other.png"
    outside.write_bytes(b"x")
    assert page_path(folder, locate(str(outside), folder)) == str(outside.absolute())


# --------------------------------------------------------------------------- the page


def test_the_document_shares_repeated_strings() -> None:
    data = GalleryData(
        batch="b",
        items=(
            item("a", vars={"color": "red"}, files=(GalleryFile("a.png", 10, 20, thumb="t.jpg"),)),
            item("b", vars={"color": "red"}, reviews={0: GalleryReview("reject", "blurry")}),
        ),
    )
    document = page_document(data, base="../out/")
    strings = document["s"]
    assert strings.count("red") == 1 and strings.count("z-image-turbo") == 1
    first, second = document["items"]
    assert first[0] == "a" and first[14] == [["a.png", "t.jpg", 10, 20]]
    assert [strings[i - 1] for i in first[9]] == ["color", "red"]
    assert second[15] == {"0": [2, "blurry"]}
    assert document["base"] == "../out/"
    assert document["review"] is None


def test_prompts_cannot_end_the_script_or_inject_markup() -> None:
    evil = "</script><script>alert(1)</script><!-- {{css}}"
    page = render_page(GalleryData(batch="<b>&", items=(item(prompt=evil, reason=evil),)))
    data = re.search(
        r'<script type="application/json" id="batcher-data">(.*?)</script>', page, re.S
    )
    assert data is not None
    assert json.loads(data.group(1))["items"][0][3] == evil
    assert page.count("</script>") == 2  # the data block's and the script's own
    assert "<title>&lt;b&gt;&amp; · batcher gallery</title>" in page
    # A placeholder in a value stays text: only the template's own are filled.
    assert page.count("{{css}}") == 2  # in the prompt and the reason
    assert page.count("--complete:") == 1


def test_the_page_loads_nothing_from_elsewhere() -> None:
    page = render_page(GalleryData(batch="b", items=(item(),)))
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)
    assert "@import" not in page and "url(" not in page
    assert "<link" not in page


# --------------------------------------------------------------------------- thumbnails


def test_thumbnails_are_made_once_and_again_only_when_the_image_changes(tmp_path: Path) -> None:
    sources = []
    for n, mode in enumerate(("RGB", "RGBA", "P", "L")):
        path = tmp_path / f"{n}.png"
        Image.new(mode, (800, 400)).save(path)
        sources.append(path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    sources.append(broken)

    first = thumbnails.ensure(tmp_path, sources)
    assert first.made == 4 and broken not in first.thumbs
    for source in sources[:4]:
        thumb = first.thumbs[source]
        assert (thumb.source_width, thumb.source_height) == (800, 400)
        with Image.open(tmp_path / ".thumbs" / thumb.name) as image:
            assert image.format == "JPEG" and image.size == (thumbnails.MAX_SIDE, 160)

    again = thumbnails.ensure(tmp_path, sources)
    assert again.made == 0 and again.thumbs == first.thumbs
    assert (again.thumbs[sources[0]].source_width, again.thumbs[sources[0]].source_height) == (
        800,
        400,
    )

    Image.new("RGB", (100, 100), "red").save(sources[0])
    os.utime(sources[0], ns=(1, 1))  # a different modification time, whatever the clock
    third = thumbnails.ensure(tmp_path, sources)
    assert third.made == 1
    assert third.thumbs[sources[0]].name != first.thumbs[sources[0]].name
    names = {p.name for p in (tmp_path / ".thumbs").iterdir()}
    assert names == {t.name for t in third.thumbs.values()}  # the stale one is removed
