"""Item keys: stable across re-reads and edits that do not touch the item."""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from batcher.jobfile.catalog import Catalog
from batcher.jobfile.items import ItemSettings, identity_digest, item_key
from batcher.jobfile.loader import JobSpec, load_job

LoadText = Callable[..., JobSpec]  # the fixtures of conftest.py
WriteJob = Callable[..., Path]

JOB = """\
name: keys
defaults:
  model: flux-schnell
prompts:
  - A red bicycle
  - prompt: A blue bicycle
    image_count: 2
  - file: p.txt
  - A green bicycle
"""
LINES = "one\ntwo\nA red bicycle\n"


def keys(job: JobSpec) -> dict[tuple[str, str], str]:
    """(prompt, file name) -> key: the same prompt may be inline and in a prompts file."""
    return {(item.prompt, Path(item.path).name): item.key for item in job.items()}


def test_keys_are_stable_across_reads(write_job: WriteJob, catalog: Catalog) -> None:
    path = write_job(JOB, {"p.txt": LINES})
    first = [item.key for item in load_job(path, catalog).items()]
    second = [item.key for item in load_job(path, catalog).items()]
    assert first == second
    assert len(set(first)) == len(first) == 6  # the repeated prompt gets occurrence 1


def test_keys_are_derived_from_batch_identity_and_occurrence(load_text: LoadText) -> None:
    job = load_text(JOB, {"p.txt": LINES})
    seen: dict[bytes, int] = {}
    for item in job.items():
        identity = identity_digest(item.prompt, item.settings)
        occurrence = seen.get(identity, 0)
        seen[identity] = occurrence + 1
        assert item.key == item_key("keys", identity, occurrence)
    # "A red bicycle" is both inline and in p.txt, with the same settings
    assert sorted(seen.values()) == [1, 1, 1, 1, 2]


def test_identical_entries_get_occurrence_indexes(load_text: LoadText) -> None:
    job = load_text(
        "name: dup\nprompts:\n  - same\n  - other\n  - same\n  - file: p.txt\n",
        {"p.txt": "same\n"},
    )
    items = [item for item in job.items() if item.prompt == "same"]
    identity = identity_digest("same", items[0].settings)
    assert [item.key for item in items] == [item_key("dup", identity, n) for n in range(3)]


def test_same_prompt_with_other_settings_is_a_different_identity(load_text: LoadText) -> None:
    job = load_text("name: d\nprompts:\n  - same\n  - prompt: same\n    image_count: 2\n")
    first, second = job.items()
    assert first.key == item_key("d", identity_digest("same", first.settings), 0)
    assert second.key == item_key("d", identity_digest("same", second.settings), 0)
    assert first.key != second.key


def test_appending_prompts_leaves_other_keys_unchanged(load_text: LoadText) -> None:
    before = keys(load_text(JOB, {"p.txt": LINES}))
    after = keys(load_text(JOB + "  - A yellow bicycle\n", {"p.txt": LINES + "three\n"}))
    assert {prompt: after[prompt] for prompt in before} == before
    assert set(after) - set(before) == {("A yellow bicycle", "job.yaml"), ("three", "p.txt")}


def test_inserting_and_reordering_leave_other_keys_unchanged(load_text: LoadText) -> None:
    before = keys(load_text(JOB, {"p.txt": LINES}))
    edited = JOB.replace("  - A green bicycle\n", "").replace(
        "prompts:\n", "prompts:\n  - A green bicycle\n  - A new one\n"
    )
    after = keys(load_text(edited, {"p.txt": "two\none\nA red bicycle\n"}))
    assert {prompt: after[prompt] for prompt in before} == before


def test_changed_settings_change_the_key(load_text: LoadText) -> None:
    before = keys(load_text(JOB, {"p.txt": LINES}))
    after = keys(
        load_text(JOB.replace("model: flux-schnell", "model: z-image-turbo"), {"p.txt": LINES})
    )
    # Every prompt inherits the default model, so every key changes.
    assert not set(before.values()) & set(after.values())
    resized = keys(load_text(JOB.replace("image_count: 2", "image_count: 3"), {"p.txt": LINES}))
    blue, red = ("A blue bicycle", "job.yaml"), ("A red bicycle", "job.yaml")
    assert resized[blue] != before[blue]
    assert resized[red] == before[red]


def test_an_explicit_default_value_gives_the_same_key_as_the_catalog_default(
    load_text: LoadText,
) -> None:
    # Keys depend on effective settings, not on where they were written.
    implicit = keys(load_text("name: k\nprompts:\n  - a\n"))
    explicit = keys(load_text('name: k\ndefaults:\n  aspect_ratio: "1:1"\nprompts:\n  - a\n'))
    assert implicit == explicit


def test_batch_name_changes_every_key(load_text: LoadText) -> None:
    plain = keys(load_text(JOB, {"p.txt": LINES}))
    renamed = keys(load_text(JOB, {"p.txt": LINES}, batch_name="keys-rerun"))
    assert not set(plain.values()) & set(renamed.values())
    same = keys(load_text(JOB, {"p.txt": LINES}, batch_name="keys"))
    assert same == plain


def test_dated_names_make_one_batch_per_day(write_job: WriteJob, catalog: Catalog) -> None:
    path = write_job("name: 'nightly-{date}'\nprompts:\n  - a\n")
    monday = load_job(path, catalog, today=datetime.date(2026, 3, 16))
    again = load_job(path, catalog, today=datetime.date(2026, 3, 16))
    tuesday = load_job(path, catalog, today=datetime.date(2026, 3, 17))
    assert keys(monday) == keys(again)
    assert keys(monday) != keys(tuesday)


def reference_identity(prompt: str, settings: ItemSettings) -> bytes:
    """The definition the keys of every existing ledger were made with."""
    canonical = json.dumps([prompt, settings.as_dict()], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).digest()


def reference_key(batch_name: str, identity: bytes, occurrence: int) -> str:
    digest = hashlib.sha256()
    for part in (batch_name.encode("utf-8"), b"\x00", identity, b"\x00", str(occurrence).encode()):
        digest.update(part)
    return digest.hexdigest()[:20]


@pytest.mark.parametrize(
    "prompt",
    ["A red bicycle", 'quotes " and \\ backslash', "tab\tnew\nline\x01", "café ☕ 🚲 日本", ""],
)
@pytest.mark.parametrize(
    "settings",
    [
        ItemSettings("default", None, "1:1", "general", 1),
        ItemSettings("flux-schnell", "640px", "16:9", "ai-photo-generator", 4, "a name"),
        ItemSettings("seedream-v4", "4k", "9:16", "general", 16, 'named "x" ☕ \\'),
    ],
)
def test_keys_are_byte_for_byte_those_of_the_canonical_json(
    prompt: str, settings: ItemSettings
) -> None:
    # Built from cached pieces for speed, they must not differ by one byte from
    # the json.dumps definition, or every batch already in a ledger would be sent again.
    assert identity_digest(prompt, settings) == reference_identity(prompt, settings)
    identity = identity_digest(prompt, settings)
    for batch, occurrence in (("b", 0), ("nightly-2026-03-14", 12), ("日本 ☕", 100_000)):
        assert item_key(batch, identity, occurrence) == reference_key(batch, identity, occurrence)
