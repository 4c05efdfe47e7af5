"""Fixtures for browser tests: Debian's Chromium driven by Playwright for Python.

No browser is ever downloaded (`playwright install` is never run): Playwright
launches /usr/bin/chromium (`apt-get install chromium chromium-driver`). The
tests skip, with the reason, only when that binary is missing and
BATCHER_REQUIRE_BROWSER is not set; CI sets it, so there they fail instead.

- `browser`: one Chromium per module. Not per session: while Playwright's
  sync API is active, its event loop counts as running in the main thread,
  and the asyncio tests of the tiers after this one could not start theirs.
- `offline_page`: a page on which every request that is not file:// is
  aborted and recorded in `page.blocked`: the gallery must need none.
- `local_page(origin)`: a page that may reach only `origin` (the review server).
- `built_batch`: a real batch (see batches.py), built once per module and
  copied for each test, so a test may change its ledger freely.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from batches import BuiltBatch, build_batch
from browser_page import Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        reason = f"no Chromium at {CHROMIUM}: apt-get install chromium chromium-driver"
        if os.environ.get("BATCHER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"BATCHER_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def offline_page(browser: Any) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    page = Page(context.new_page())

    def refuse(route: Any) -> None:
        url = route.request.url
        if url.startswith("file://"):
            route.continue_()
            return
        page.blocked.append(url)
        route.abort()

    context.route("**/*", refuse)
    yield page
    context.close()


@pytest.fixture
def local_page(browser: Any) -> Iterator[Callable[[str], Page]]:
    contexts: list[Any] = []

    def make(origin: str) -> Page:
        context = browser.new_context(viewport=VIEWPORT)
        contexts.append(context)
        page = Page(context.new_page())

        def only_origin(route: Any) -> None:
            if route.request.url.startswith(origin):
                route.continue_()
                return
            page.blocked.append(route.request.url)
            route.abort()

        context.route("**/*", only_origin)
        return page

    yield make
    for context in contexts:
        context.close()


@pytest.fixture(scope="module")
def _module_batch(tmp_path_factory: pytest.TempPathFactory) -> BuiltBatch:
    return build_batch(tmp_path_factory.mktemp("batch"))


@pytest.fixture
def built_batch(_module_batch: BuiltBatch, tmp_path: Path) -> BuiltBatch:
    """A private copy of the module's batch: ledger, images and manifest."""
    source = Path(_module_batch.out).parent
    copy = tmp_path / "batch"
    shutil.copytree(source, copy)
    return replace(_module_batch, db_url=f"sqlite:///{copy / 'ledger.db'}", out=copy / "out")
