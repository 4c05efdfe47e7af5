"""The review page in headless Chromium against the real server: decisions
made with the keyboard and the mouse are in the ledger at once, show again
after a restart and in `review --export`, and off loopback nothing works
without the token."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from batches import BuiltBatch, batcher
from browser_page import Page

from batcher.ledger import Ledger
from batcher.review import ReviewServer, ReviewTarget, running_review

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def open_review(
    make_page: Callable[[str], Page], server: ReviewServer, url: str | None = None
) -> Page:
    origin = f"http://127.0.0.1:{server.port}"
    page = make_page(origin)
    page.goto(url or server.url_at("127.0.0.1"))
    page.wait_ready()
    return page


def figures(page: Page) -> list[tuple[str, int]]:
    found: list[list[object]] = page.eval_on_selector_all(
        "#cards figure.image",
        "fs => fs.map(f => [f.closest('.card').dataset.key, Number(f.dataset.image)])",
    )
    return [(str(key), int(str(image))) for key, image in found]


def badges(page: Page) -> dict[tuple[str, int], str]:
    found: list[list[object]] = page.eval_on_selector_all(
        "#cards figure.image .verdict",
        "vs => vs.map(v => [v.closest('.card').dataset.key,"
        " Number(v.closest('figure').dataset.image), v.textContent])",
    )
    return {(str(key), int(str(image))): str(text) for key, image, text in found}


def press(page: Page, *keys: str) -> None:
    """Press keys; the last one records a decision, awaited until the server answered."""
    for key in keys[:-1]:
        page.keyboard.press(key)
    with page.expect_response("**/api/reviews") as response:
        page.keyboard.press(keys[-1])
    assert response.value.ok, response.value.text()


def decisions(batch: BuiltBatch) -> dict[tuple[str, int], tuple[str, str | None]]:
    with Ledger.open(batch.db_url) as ledger:
        found = ledger.get_batch(batch.name)
        assert found is not None
        latest = ledger.latest_reviews(found.id)
    return {place: (r.verdict, r.note) for place, r in latest.items()}


def test_keyboard_and_click_decisions_are_kept_across_a_restart(
    local_page: Callable[[str], Page], built_batch: BuiltBatch, tmp_path: Path
) -> None:
    before = decisions(built_batch)
    assert list(before.values()) == [("reject", "the wheel is bent")]  # made by build_batch
    with Ledger.open(built_batch.db_url) as ledger:
        target = ReviewTarget(ledger, built_batch.name, built_batch.out)
        with running_review(target) as server:
            page = open_review(local_page, server)
            order = figures(page)
            assert len(order) >= 6
            assert badges(page) == dict.fromkeys(before, "rejected")
            assert page.is_visible("#cards figure.image.current")  # the cursor starts on the first

            press(page, "p")  # the first image: its reject becomes a pick
            press(page, "j", "x")  # the second: rejected
            press(page, "ArrowRight", "ArrowRight", "p")  # the fourth: picked
            press(page, "ArrowLeft", "x")  # the third: rejected...
            press(page, "u")  # ...and cleared again
            press(page, "k", "k", "ArrowDown", "x")  # back to the second, unchanged: rejected

            fifth = page.locator("#cards figure.image").nth(4)
            fifth.locator("input.note").fill("too dark")
            with page.expect_response("**/api/reviews"):
                fifth.locator('button[data-verdict="reject"]').click()
            sixth = page.locator("#cards figure.image").nth(5)
            with page.expect_response("**/api/reviews"):
                sixth.locator('button[data-verdict="pick"]').click()

            page.keyboard.press("f")  # full size of the current image, and back
            assert page.is_visible("#viewer")
            page.keyboard.press("f")
            assert page.is_hidden("#viewer")
            page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
            assert page.blocked == []

            expected = {
                order[0]: ("pick", "the wheel is bent"),  # the note stays with the image
                order[1]: ("reject", None),
                order[3]: ("pick", None),
                order[4]: ("reject", "too dark"),
                order[5]: ("pick", None),
            }
            # In the ledger the moment each answer came, with the server still up.
            assert decisions(built_batch) == expected
            shown = badges(page)
        assert shown == {place: VERDICT[v] for place, (v, _) in expected.items()}

    # A new server on the same ledger shows them all again.
    with Ledger.open(built_batch.db_url) as ledger:
        target = ReviewTarget(ledger, built_batch.name, built_batch.out)
        with running_review(target) as server:
            page = open_review(local_page, server)
            assert badges(page) == shown
            note = page.locator("#cards figure.image").nth(4).locator(".verdict-note").inner_text()
            assert note == "too dark"
            page.screenshot(path=str(tmp_path / "review-after-restart.png"), full_page=True)

    exported = batcher("review", built_batch.name, "--db", built_batch.db_url, "--export", "json")
    assert exported.returncode == 0, exported.stderr
    document = json.loads(exported.stdout)
    rows = {
        (row["key"], row["image"] - 1): (row["verdict"], row["note"]) for row in document["reviews"]
    }
    assert rows == expected
    assert (document["picked"], document["rejected"]) == (3, 2)
    assert all(row["file"] and row["prompt"] for row in document["reviews"])

    as_csv = batcher("review", built_batch.name, "--db", built_batch.db_url, "--export", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {(row["key"], int(row["image"]) - 1): row["verdict"] for row in table} == {
        place: verdict for place, (verdict, _) in expected.items()
    }


VERDICT = {"pick": "picked", "reject": "rejected"}


def test_off_loopback_the_page_needs_its_token(
    local_page: Callable[[str], Page], built_batch: BuiltBatch, tmp_path: Path
) -> None:
    with Ledger.open(built_batch.db_url) as ledger:
        target = ReviewTarget(ledger, built_batch.name, built_batch.out)
        with running_review(target, host="0.0.0.0") as server:
            assert server.token
            origin = f"http://127.0.0.1:{server.port}"
            page = local_page(origin)
            refused = page.goto(f"{origin}/")
            assert refused is not None and refused.status == 403
            assert "token" in page.content()
            page.screenshot(path=str(tmp_path / "refused.png"))

            page.goto(server.url_at("127.0.0.1"))  # the URL as printed, token and all
            page.wait_ready()
            widths = page.images_loaded("#cards figure.image img.thumb")
            assert widths and all(w > 0 for w in widths)
            first = figures(page)[0]
            press(page, "p")
            assert decisions(built_batch)[first][0] == "pick"
            page.screenshot(path=str(tmp_path / "review-token.png"))

            # A second browser without the token gets nothing, images included.
            stranger = local_page(origin)
            thumb = page.eval_on_selector("#cards figure.image img.thumb", "i => i.src")
            bare = thumb.split("?")[0]
            answer = stranger.goto(bare)
            assert answer is not None and answer.status == 403
