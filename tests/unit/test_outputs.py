"""The output folder: names, the manifest, and disk errors as OutputError."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from batcher.errors import InputError, OutputError, OutputFolderError
from batcher.folders import batch_folder, slug
from batcher.run.files import Manifest, image_name, prepare_folder

FULL_DEVICE = Path("/dev/full")  # every write fails with ENOSPC, as on a full disk
needs_dev_full = pytest.mark.skipif(not FULL_DEVICE.exists(), reason="no /dev/full here")


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
    # A name that had to change gets a short hash: "nightly_2026-11-25" keeps its own folder.
    lossy = batch_folder(None, "nightly/2026-11-25")
    assert lossy.parent == Path("out") and lossy.name.startswith("nightly_2026-11-25-")
    assert batch_folder(None, "nightly_2026-11-25") == Path("out/nightly_2026-11-25")
    assert batch_folder(Path("mine"), "x") == Path("mine")


def test_manifest_appends_json_lines(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "b")
    manifest.write({"key": "a", "state": "complete"})
    manifest.write({"key": "b", "state": "failed"})
    manifest.close()
    lines = (tmp_path / "b" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["a", "b"]


def test_prepare_folder_creates_it_and_leaves_nothing_behind(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    prepare_folder(folder)
    assert folder.is_dir()
    assert list(folder.iterdir()) == []


def test_a_folder_that_is_a_file_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(OutputFolderError) as caught:
        prepare_folder(tmp_path / "taken" / "out")
    assert isinstance(caught.value, InputError)  # exit 2: bad configuration
    assert caught.value.exit_code == 2
    assert caught.value.path == str(tmp_path / "taken" / "out")
    assert "must be writable" in str(caught.value)
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        prepare_folder(tmp_path / "taken")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputFolderError, match="Permission denied"):
            prepare_folder(folder)
    finally:
        folder.chmod(0o700)


@needs_dev_full
def test_a_full_disk_under_the_manifest_is_an_output_error(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path)
    manifest.path = FULL_DEVICE  # a symlink to it would not be followed (O_NOFOLLOW)
    with pytest.raises(OutputError) as caught:
        manifest.write({"key": "a", "state": "complete"})
    manifest.close()
    assert caught.value.path == str(FULL_DEVICE)
    assert caught.value.reason == "No space left on device"
    assert caught.value.exit_code == 1


def test_a_planted_manifest_symlink_is_never_written_through(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep\n")
    (tmp_path / "manifest.jsonl").symlink_to(target)
    with pytest.raises(OutputError, match="symbolic link"):
        Manifest(tmp_path).write({"key": "a"})
    assert target.read_text() == "keep\n"


def test_a_manifest_folder_that_cannot_be_made_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(OutputError, match="cannot write"):
        Manifest(tmp_path / "taken").write({"key": "a"})
