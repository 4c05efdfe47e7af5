"""The page object the browser tests drive (imported by name: every test folder
has a `conftest`, so a test must not import from one)."""

from __future__ import annotations

from typing import Any


class Page:
    """A Playwright page and what it tried to fetch that was refused."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.blocked: list[str] = []
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.page, name)

    def wait_ready(self) -> None:
        self.page.wait_for_selector("body[data-ready]")
        assert not self.errors, self.errors

    def images_loaded(self, selector: str = "img.thumb") -> list[int]:
        """Each matching image's natural width (0: it did not load), scrolling
        each into view as a person would, since thumbnails load lazily."""
        widths: list[int] = self.page.evaluate(
            """async (selector) => {
                const images = Array.from(document.querySelectorAll(selector));
                for (const image of images) {
                    image.scrollIntoView();
                    await new Promise((done) => {
                        if (image.complete) return done();
                        image.addEventListener("load", done, { once: true });
                        image.addEventListener("error", done, { once: true });
                    });
                }
                window.scrollTo(0, 0);
                return images.map((image) => image.naturalWidth);
            }""",
            selector,
        )
        return widths
