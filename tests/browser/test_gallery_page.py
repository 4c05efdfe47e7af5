"""The static gallery, opened from file:// in headless Chromium with every
network request refused: cards, thumbnails, counts, credits, failure
reasons, filters, the grid, reruns side by side, and 10,000 items."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from batches import PROMPTS, REDO_PROMPT, BuiltBatch, batcher
from browser_page import Page
from PIL import Image

from batcher.folders import slug
from batcher.ledger import Ledger
from batcher.reports.gallery_data import GalleryData, GalleryFile, GalleryItem
from batcher.reports.gallery_page import PAGE_SIZE, render_page

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def make_gallery(batch: BuiltBatch, *extra: str) -> Path:
    result = batcher("gallery", batch.name, "--db", batch.db_url, "--out", str(batch.out), *extra)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path == batch.out / "index.html"
    return path


def open_gallery(page: Page, path: Path) -> None:
    page.goto(path.as_uri())
    page.wait_ready()


def card_keys(page: Page) -> list[str]:
    keys: list[str] = page.eval_on_selector_all("#cards .card", "cs => cs.map(c => c.dataset.key)")
    return keys


def ledger_items(batch: BuiltBatch) -> dict[str, Any]:
    with Ledger.open(batch.db_url) as ledger:
        [summary] = ledger.batch_summaries(batch.name)
        return {"summary": summary, "items": list(ledger.items(summary.id))}


def test_every_card_and_thumbnail_from_file_with_no_network(
    offline_page: Page, built_batch: BuiltBatch, tmp_path: Path
) -> None:
    path = make_gallery(built_batch)
    open_gallery(offline_page, path)
    offline_page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)

    known = ledger_items(built_batch)
    items, summary = known["items"], known["summary"]
    assert sorted(card_keys(offline_page)) == sorted(item.key for item in items)
    images = sum(len(item.files) for item in items)
    widths = offline_page.images_loaded("#cards figure.image img.thumb")
    assert len(widths) == images and all(w > 0 for w in widths), widths
    assert offline_page.blocked == []
    # The thumbnails are small files of their own, not the full images.
    sources = offline_page.eval_on_selector_all(
        "#cards figure.image img.thumb", "i => i.map(x => x.src)"
    )
    assert all("/.thumbs/" in src for src in sources)
    assert len(list((built_batch.out / ".thumbs").glob("*.jpg"))) == images

    counts = {
        state: int(offline_page.inner_text(f'#counts li[data-state="{state}"] b'))
        for state in summary.states
    }
    assert counts == dict(summary.states)
    total = offline_page.locator("#credits tr.total")
    assert int(total.locator(".charged").inner_text()) == summary.credits_charged
    assert int(total.locator(".refunded").inner_text()) == summary.credits_refunded
    assert int(total.locator(".net").inner_text()) == summary.credits_net
    # Everything the ledger knows, the sandbox charged and refunded; what it
    # does not know is the answer that was lost (in doubt, not charged here).
    assert summary.credits_refunded == built_batch.refunded
    assert summary.credits_charged <= built_batch.charged


def test_failures_and_doubts_say_why(offline_page: Page, built_batch: BuiltBatch) -> None:
    open_gallery(offline_page, make_gallery(built_batch))
    items = {item.key: item for item in ledger_items(built_batch)["items"]}
    reasons = {
        key: offline_page.inner_text(f'.card[data-key="{key}"] .reason')
        for key, item in items.items()
        if item.state in ("failed", "unconfirmed")
    }
    assert reasons
    for key, text in reasons.items():
        item = items[key]
        if item.failure == "render":
            assert text.startswith("the render failed (refunded)"), text
        elif item.failure == "refused":
            assert text.startswith("refused by the API: HTTP 403"), text
        else:
            assert item.state == "unconfirmed"
            assert text.startswith("in doubt:"), text
    assert offline_page.locator(".card.state-complete .reason").count() == 0


def test_filters_by_state_model_variable_and_review(
    offline_page: Page, built_batch: BuiltBatch
) -> None:
    open_gallery(offline_page, make_gallery(built_batch))
    items = ledger_items(built_batch)["items"]
    page = offline_page

    page.check("#filter-state-failed")
    assert sorted(card_keys(page)) == sorted(i.key for i in items if i.state == "failed")
    page.check("#filter-state-unconfirmed")
    expected = sorted(i.key for i in items if i.state in ("failed", "unconfirmed"))
    assert sorted(card_keys(page)) == expected
    page.uncheck("#filter-state-failed")
    page.uncheck("#filter-state-unconfirmed")
    assert len(card_keys(page)) == len(items)

    page.select_option("#filter-model", "flux-schnell")
    assert sorted(card_keys(page)) == sorted(
        i.key for i in items if i.settings.model == "flux-schnell"
    )
    page.select_option("#filter-model", "")

    page.select_option("#filter-var-color", "teal")
    teal = [i.key for i in items if i.prompt.startswith("A teal")]
    assert sorted(card_keys(page)) == sorted(teal)
    page.select_option("#filter-var-object", "kettle")
    assert [page.inner_text(".card .prompt")] == ["A teal kettle on a beach"]
    page.select_option("#filter-var-color", "")
    page.select_option("#filter-var-object", "")

    page.select_option("#filter-review", "reject")
    [rejected] = card_keys(page)
    assert page.inner_text(f'.card[data-key="{rejected}"] .prompt') == PROMPTS[0]["prompt"]
    assert page.inner_text(f'.card[data-key="{rejected}"] .verdict') == "rejected"
    assert "the wheel is bent" in page.inner_text(f'.card[data-key="{rejected}"] .verdict-note')


def test_the_grid_has_the_first_two_variables_by_default(
    offline_page: Page, built_batch: BuiltBatch, tmp_path: Path
) -> None:
    open_gallery(offline_page, make_gallery(built_batch))
    page = offline_page
    page.click("#view-grid")
    assert page.is_hidden("#cards")
    headers = page.eval_on_selector_all("table.grid thead th", "hs => hs.map(h => h.textContent)")
    assert headers[1:] == ["bicycle", "kettle", "lamp", "(none)"]  # (none): no variables
    rows = page.eval_on_selector_all("table.grid tbody th", "hs => hs.map(h => h.textContent)")
    assert rows == ["red", "teal", "(none)"]
    # Each combination is one item; the cell shows its images.
    red_kettle = page.locator('table.grid td[data-row="red"][data-col="kettle"]')
    assert red_kettle.get_attribute("data-items") == "1"
    assert all(w > 0 for w in page.images_loaded('table.grid td[data-row="red"] img.thumb'))
    page.screenshot(path=str(tmp_path / "grid.png"), full_page=True)


def test_the_grid_can_use_settings(offline_page: Page, built_batch: BuiltBatch) -> None:
    open_gallery(
        offline_page, make_gallery(built_batch, "--rows", "model", "--cols", "aspect_ratio")
    )
    page = offline_page
    page.click("#view-grid")
    items = ledger_items(built_batch)["items"]
    cell = page.locator('table.grid td[data-row="flux-schnell"][data-col="16:9"]')
    expected = sum(
        1 for i in items if i.settings.model == "flux-schnell" and i.settings.aspect_ratio == "16:9"
    )
    assert cell.get_attribute("data-items") == str(expected) == "1"
    # The axes can be changed on the page itself, and the filters still apply.
    page.select_option("#grid-cols", "color")
    assert page.locator('table.grid td[data-row="z-image-turbo"][data-col="red"]').count() == 1
    page.check("#filter-state-failed")
    counts = page.eval_on_selector_all(
        "table.grid td", "ts => ts.map(t => Number(t.dataset.items))"
    )
    # Items without a colour are in a column of their own.
    assert sum(counts) == sum(1 for i in items if i.state == "failed")
    assert page.locator('table.grid td[data-col="(none)"]').count() > 0


def test_an_unknown_axis_is_refused(built_batch: BuiltBatch) -> None:
    result = batcher("gallery", built_batch.name, "--db", built_batch.db_url, "--rows", "flavour")
    assert result.returncode == 2
    assert "--rows flavour: not a variable or setting" in result.stderr


def test_a_rerun_shows_the_old_image_beside_the_new(
    offline_page: Page, built_batch: BuiltBatch
) -> None:
    open_gallery(offline_page, make_gallery(built_batch))
    items = {item.prompt: item for item in ledger_items(built_batch)["items"]}
    old, new = items[PROMPTS[0]["prompt"]], items[REDO_PROMPT]
    card = offline_page.locator(f'.card[data-key="{new.key}"]')
    assert card.locator("figure.before figcaption").inner_text() == "before"
    assert card.locator("figure.image figcaption").inner_text() == "after"
    assert card.locator(".redo").inner_text() == f"redoes {old.key}"
    widths = offline_page.images_loaded(f'.card[data-key="{new.key}"] img.thumb')
    assert len(widths) == 2 and all(w > 0 for w in widths)
    before, after = card.locator("img.thumb").evaluate_all("i => i.map(x => x.src)")
    assert before != after
    assert offline_page.inner_text(f'.card[data-key="{old.key}"] .redo') == f"redone by {new.key}"


def test_full_size_opens_from_a_thumbnail(offline_page: Page, built_batch: BuiltBatch) -> None:
    open_gallery(offline_page, make_gallery(built_batch))
    offline_page.click("#cards figure.image img.thumb >> nth=0")
    assert offline_page.is_visible("#viewer")
    offline_page.wait_for_function("document.getElementById('viewer-image').complete")
    width = offline_page.eval_on_selector("#viewer-image", "i => i.naturalWidth")
    assert width >= 288  # the image itself, not its thumbnail
    offline_page.keyboard.press("Escape")
    assert offline_page.is_hidden("#viewer")


def test_thumbnails_are_made_once_and_redone_when_an_image_changes(built_batch: BuiltBatch) -> None:
    first = batcher(
        "gallery", built_batch.name, "--db", built_batch.db_url, "--out", str(built_batch.out)
    )
    assert "new thumbnails" in first.stderr
    thumbs = {p.name: p.stat().st_mtime_ns for p in (built_batch.out / ".thumbs").glob("*.jpg")}
    again = batcher(
        "gallery", built_batch.name, "--db", built_batch.db_url, "--out", str(built_batch.out)
    )
    assert "new thumbnails" not in again.stderr
    assert {
        p.name: p.stat().st_mtime_ns for p in (built_batch.out / ".thumbs").glob("*.jpg")
    } == thumbs
    image = sorted(built_batch.out.glob("0*.png"))[0]
    Image.new("RGB", (64, 64), "orange").save(image)
    third = batcher(
        "gallery", built_batch.name, "--db", built_batch.db_url, "--out", str(built_batch.out)
    )
    assert "1 new thumbnails" in third.stderr
    now = {p.name for p in (built_batch.out / ".thumbs").glob("*.jpg")}
    assert len(now) == len(thumbs) and len(now - set(thumbs)) == 1  # the stale one is gone


def test_a_page_written_elsewhere_still_finds_the_images(
    offline_page: Page, built_batch: BuiltBatch, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "reports" / "morning.html"
    result = batcher(
        "gallery",
        built_batch.name,
        "--db",
        built_batch.db_url,
        "--out",
        str(built_batch.out),
        "--output",
        str(elsewhere),
    )
    assert result.returncode == 0, result.stderr
    open_gallery(offline_page, elsewhere)
    widths = offline_page.images_loaded("#cards figure.image img.thumb")
    assert widths and all(w > 0 for w in widths)


# --------------------------------------------------------------------------- scale


def synthetic(count: int) -> GalleryData:
    """10,000 items shaped like a real nightly batch: templated prompts,
    variables, one image each, project ids, a few failures."""
    colors = ["red", "teal", "matte black", "ivory", "cobalt"]
    products = [f"product {n:03d}" for n in range(count // len(colors))]
    items = []
    for n in range(count):
        color, product = colors[n % len(colors)], products[n // len(colors)]
        key = f"{n:020x}"
        failed = n % 97 == 0
        prompt = f"A {color} {product} on a white background, studio light"
        items.append(
            GalleryItem(
                key=key,
                ordinal=n,
                state="failed" if failed else "complete",
                prompt=prompt,
                model="z-image-turbo" if n % 3 else "flux-schnell",
                resolution="1k",
                aspect_ratio="1:1",
                tool="general",
                image_count=1,
                vars={"color": color, "product": product},
                project_id=f"cmx{n:022d}",
                credits_charged=5,
                credits_refunded=5 if failed else 0,
                reason="the render failed (refunded): The image could not be generated."
                if failed
                else None,
                files=()
                if failed
                else (
                    GalleryFile(
                        path=f"{n + 1:05d}-{slug(prompt)}-{key}-1.png",
                        width=1024,
                        height=1024,
                        thumb=f"{n:016x}.jpg",
                    ),
                ),
            )
        )
    return GalleryData(
        batch="nightly-products-2026-12-01", items=tuple(items), rows="color", cols="product"
    )


def test_ten_thousand_items_stay_small_and_usable(offline_page: Page, tmp_path: Path) -> None:
    page_text = render_page(synthetic(10_000))
    size = len(page_text.encode("utf-8"))
    print(f"gallery page for 10,000 items: {size:,} bytes")
    assert size < 5_000_000
    path = tmp_path / "index.html"
    path.write_text(page_text, encoding="utf-8")
    open_gallery(offline_page, path)
    assert len(card_keys(offline_page)) == PAGE_SIZE
    pages = -(-10_000 // PAGE_SIZE)
    assert offline_page.inner_text("#page-info") == f"page 1 of {pages} · 10000 items"
    offline_page.click("#page-next")
    assert card_keys(offline_page)[0] == f"{PAGE_SIZE:020x}"
    offline_page.select_option("#filter-var-color", "cobalt")
    assert (
        offline_page.inner_text("#page-info") == f"page 1 of {-(-2000 // PAGE_SIZE)} · 2000 items"
    )
    offline_page.check("#filter-state-failed")
    failed = sum(1 for n in range(10_000) if n % 97 == 0 and n % 5 == 4)
    assert len(card_keys(offline_page)) == failed


def test_prompts_are_shown_as_text_never_run(offline_page: Page, tmp_path: Path) -> None:
    evil = (
        "<img src=x onerror=\"document.title='owned'\">"
        '</script><script>document.title="owned"</script>'
    )
    data = GalleryData(
        batch="b",
        items=(
            GalleryItem(
                key="k",
                ordinal=0,
                state="failed",
                prompt=evil,
                model="m",
                resolution=None,
                aspect_ratio="1:1",
                tool="general",
                image_count=1,
                reason=evil,
                vars={"v": evil},
            ),
        ),
    )
    path = tmp_path / "index.html"
    path.write_text(render_page(data), encoding="utf-8")
    open_gallery(offline_page, path)
    assert offline_page.inner_text(".card .prompt") == evil
    assert offline_page.inner_text(".card .reason") == evil
    assert offline_page.title() == "b · batcher gallery"
    assert offline_page.locator(".card img").count() == 0
