from __future__ import annotations

import json
from pathlib import Path

from batcher.run.files import Manifest, batch_folder, image_name, slug


def test_slug_is_short_safe_and_readable() -> None:
    assert slug("A red bicycle, on a beach at dawn!") == "a-red-bicycle-on-a-beach-at-dawn"
    assert slug("Ça va? 東京") == "ca-va"
    assert slug("!!!") == "item"
    assert len(slug("word " * 50)) <= 40


def test_image_names_are_unique_per_item_and_image() -> None:
    names = {
        image_name(ordinal, "same prompt", key, index, "https://x/y/z.png?sig=1")
        for ordinal, key in ((0, "aaaa"), (0, "bbbb"))
        for index in range(3)
    }
    assert len(names) == 6
    assert image_name(0, "p", "k", 0, "https://x/a.JPG").endswith(".jpg")
    assert image_name(0, "p", "k", 0, "https://x/download").endswith(".png")


def test_batch_folder_defaults_to_a_safe_name_under_out() -> None:
    assert batch_folder(None, "nightly/2026-11-25") == Path("out/nightly_2026-11-25")
    assert batch_folder(Path("mine"), "x") == Path("mine")


def test_manifest_appends_json_lines(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "b")
    manifest.write({"key": "a", "state": "complete"})
    manifest.write({"key": "b", "state": "failed"})
    manifest.close()
    lines = (tmp_path / "b" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["a", "b"]
