"""The rerun plan (pure): one new item per item with a rejected image, settings
kept unless overridden and checked against the catalog, never twice unless
asked; and the values the download path records."""

from __future__ import annotations

from datetime import UTC, datetime

import click
import pytest

from batcher.cli.options import ByteSize
from batcher.errors import ConfigError
from batcher.jobfile.catalog import load_catalog
from batcher.jobfile.items import ItemSettings
from batcher.ledger import ItemRecord, ReviewedImage, SavedFile
from batcher.ledger.values import files_from_json, files_to_json
from batcher.run.rerun import new_items, plan_rerun, rerun_key

CATALOG = load_catalog()
AT = datetime(2026, 3, 14, 7, 0, tzinfo=UTC)


def record(
    key: str,
    prompt: str,
    *,
    image_count: int = 1,
    state: str = "complete",
    model: str = "z-image-turbo",
    ordinal: int = 0,
    name: str | None = None,
) -> ItemRecord:
    settings = ItemSettings(model, "640px", "16:9", "general", image_count, name)
    return ItemRecord(
        id=hash(key) % 10_000,
        batch_id=1,
        key=key,
        ordinal=ordinal,
        prompt=prompt,
        settings=settings,
        project_name=f"b {key}",
        estimate=5 * image_count,
        estimate_exact=True,
        state=state,
        failure=None,
        attempts=1 if state != "pending" else 0,
        render_failures=0,
        project_id=None,
        credits_reserved=0,
        error_status=None,
        error_message=None,
        files=(),
        source_path="job.yaml",
        source_line=ordinal + 3,
    )


def review(item: ItemRecord, image: int, verdict: str = "reject") -> ReviewedImage:
    s = item.settings
    return ReviewedImage(
        item.key,
        image,
        verdict,
        None,
        AT,
        item.prompt,
        s.model,
        s.resolution,
        s.aspect_ratio,
        s.tool,
        None,
        None,
    )


A = record("a" * 20, "A red bicycle", ordinal=0, name="hero shot")
B = record("b" * 20, "A teal kettle", image_count=2, ordinal=1)
C = record("c" * 20, "A lamp", ordinal=2)
ITEMS = {item.key: item for item in (A, B, C)}
REJECTED = [review(A, 0), review(B, 0), review(B, 1)]


def test_one_new_item_per_item_with_rejected_images() -> None:
    plan = plan_rerun("night", REJECTED, ITEMS, {}, CATALOG)
    assert [(e.redoes, e.images) for e in plan.entries] == [(A.key, (1,)), (B.key, (1, 2))]
    first = plan.entries[0]
    # Same settings, but no name: the create's name carries the new key.
    assert first.settings == ItemSettings("z-image-turbo", "640px", "16:9", "general", 1, None)
    assert first.key not in ITEMS and first.key != plan.entries[1].key
    assert plan.credits == 5 + 10 and plan.exact
    assert plan.credits_per_model() == {"z-image-turbo": 15}
    # The keys are stable: the same plan again makes the same keys.
    assert plan_rerun("night", REJECTED, ITEMS, {}, CATALOG) == plan
    made = new_items(plan, ITEMS, next_ordinal=3)
    assert [(i.ordinal, i.key, i.prompt, i.path, i.line) for i in made] == [
        (3, first.key, A.prompt, "job.yaml", 3),
        (4, plan.entries[1].key, B.prompt, "job.yaml", 4),
    ]


def test_an_item_rerun_before_is_left_out_unless_again() -> None:
    first = plan_rerun("night", REJECTED, ITEMS, {}, CATALOG)
    done = record(first.entries[0].key, A.prompt, ordinal=3)
    items = {**ITEMS, done.key: done}
    links = {done.key: A.key}
    later = plan_rerun("night", REJECTED, items, links, CATALOG)
    assert [e.redoes for e in later.entries] == [B.key] and later.already_rerun == (A.key,)
    again = plan_rerun("night", REJECTED, items, links, CATALOG, again=True)
    assert [e.redoes for e in again.entries] == [A.key, B.key]
    assert again.entries[0].key not in (done.key, A.key)  # a second rerun: a key of its own
    assert again.entries[0].key == rerun_key("night", A.prompt, done.settings, A.key, 1)


def test_a_rerun_still_pending_is_sent_instead_of_made_again() -> None:
    first = plan_rerun("night", REJECTED, ITEMS, {}, CATALOG)
    unsent = record(first.entries[0].key, A.prompt, state="pending", ordinal=3)
    items = {**ITEMS, unsent.key: unsent}
    for again in (False, True):
        plan = plan_rerun("night", REJECTED, items, {unsent.key: A.key}, CATALOG, again=again)
        [left, new] = plan.entries
        assert (left.key, left.left_over) == (unsent.key, True)
        assert [e.redoes for e in plan.new] == [B.key] and new.redoes == B.key


def test_picks_and_unknown_items_are_not_rerun() -> None:
    plan = plan_rerun(
        "night", [review(C, 0, "pick"), review(record("z" * 20, "gone"), 0)], ITEMS, {}, CATALOG
    )
    assert plan.entries == ()


def test_overrides_are_checked_against_the_catalog() -> None:
    plan = plan_rerun("night", REJECTED, ITEMS, {}, CATALOG, model="flux-schnell", resolution="1k")
    assert {(e.settings.model, e.settings.resolution) for e in plan.entries} == {
        ("flux-schnell", "1k")
    }
    with pytest.raises(
        ConfigError, match=r"(?s)--model krea-2.*1 item.*teal kettle.*image_count 2"
    ):
        plan_rerun("night", REJECTED, ITEMS, {}, CATALOG, model="krea-2")
    with pytest.raises(ConfigError, match="--model nope: unknown model"):
        plan_rerun("night", REJECTED, ITEMS, {}, CATALOG, model="nope")
    with pytest.raises(ConfigError, match="--resolution 3k: unknown resolution"):
        plan_rerun("night", REJECTED, ITEMS, {}, CATALOG, resolution="3k")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("100000000", 100_000_000),
        ("500k", 500_000),
        ("100M", 100_000_000),
        ("1GB", 10**9),
        ("2m", 2_000_000),
    ],
)
def test_sizes_read_with_a_unit(text: str, size: int) -> None:
    assert ByteSize().convert(text, None, None) == size


@pytest.mark.parametrize("text", ["", "0", "-5", "1.5M", "ten", "5T"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(click.BadParameter):
        ByteSize().convert(text, None, None)


def test_item_files_read_back_in_either_shape() -> None:
    new = SavedFile("out/a.png", "ab" * 32, 10, 2, 3)
    stored = files_to_json([new, "out/old.png"])
    assert stored == [new.as_json(), "out/old.png"]
    assert files_from_json(stored) == (new, SavedFile("out/old.png"))
    # Rows written before files had details: a list of paths, maybe as JSON text.
    assert files_from_json('["x.png", "y.jpg"]') == (SavedFile("x.png"), SavedFile("y.jpg"))
    assert files_from_json(None) == () and files_from_json([3, {"no": "path"}]) == ()
