"""The gallery's one HTML page: a summary rendered here, and the items as a
compact JSON document that the page's own script turns into cards, filters
and the grid. CSS and script are inlined from `gallery_assets/`; the page
loads nothing but the batch's images and thumbnails, so it works from
`file://` with no network.

The document keeps 10,000 items to a few megabytes: repeated strings
(states, models, settings, variable names and values) are stored once in a
table `s` and referred to by position (1-based; 0 is "none"), and each item
is an array:

    [key, ordinal, state, prompt, model, resolution, aspect_ratio, tool,
     image_count, [var name, value, ...] | 0, project_id | 0, charged,
     refunded, reason | 0, [[path, thumb | 0, width | 0, height | 0], ...],
     {image: [1 pick | 2 reject, note | 0]} | 0, redo_of | 0]
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final

from batcher.ledger import STATES
from batcher.reports.gallery_data import GalleryData

PAGE_SIZE: Final = 60  # cards per page: a screenful or three, quick to build
_VERDICT_CODES: Final = {"pick": 1, "reject": 2}


@dataclass(frozen=True, slots=True)
class ReviewMode:
    """The page as `batcher review` serves it: with controls that write
    through the server's API."""

    token: str | None = None  # sent with every request when the server wants one
    api: str = "api/"
    files: str = "files/"


class _Strings:
    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __call__(self, value: str | None) -> int:
        if value is None:
            return 0
        found = self.index.get(value)
        if found is None:
            found = self.index[value] = len(self.index) + 1
        return found

    def table(self) -> list[str]:
        return list(self.index)


def page_document(
    data: GalleryData, *, base: str = "", review: ReviewMode | None = None
) -> dict[str, Any]:
    """The JSON document the page's script reads. `base` leads from the page
    to the batch folder ("" when the page is in it, else ending in "/")."""
    s = _Strings()
    items = []
    for item in data.items:
        pairs: list[int] = []
        for name, value in item.vars.items():
            pairs += [s(name), s(value)]
        files = [[f.path, f.thumb or 0, f.width or 0, f.height or 0] for f in item.files]
        decisions = {
            str(image): [_VERDICT_CODES[r.verdict], r.note or 0]
            for image, r in item.reviews.items()
            if r.verdict in _VERDICT_CODES
        }
        items.append(
            [
                item.key,
                item.ordinal,
                s(item.state),
                item.prompt,
                s(item.model),
                s(item.resolution or "auto"),
                s(item.aspect_ratio),
                s(item.tool),
                item.image_count,
                pairs or 0,
                item.project_id or 0,
                item.credits_charged,
                item.credits_refunded,
                item.reason or 0,
                files,
                decisions or 0,
                item.redo_of or 0,
            ]
        )
    return {
        "v": 1,
        "batch": data.batch,
        "base": base,
        "states": list(STATES),
        "vars": data.var_names,
        "rows": data.rows,
        "cols": data.cols,
        "page_size": PAGE_SIZE,
        "review": (
            None
            if review is None
            else {"token": review.token, "api": review.api, "files": review.files}
        ),
        "s": s.table(),
        "items": items,
    }


def render_page(data: GalleryData, *, base: str = "", review: ReviewMode | None = None) -> str:
    """The whole page as text."""
    document = json.dumps(
        page_document(data, base=base, review=review), ensure_ascii=False, separators=(",", ":")
    )
    # Inside <script> only "</" could end the element early; "<\/" is the same JSON string.
    document = document.replace("</", "<\\/").replace("<!--", "<\\u0021--")
    title = f"{data.batch} · batcher {'review' if review else 'gallery'}"
    fields = {
        "title": html.escape(title),
        "heading": html.escape(data.batch),
        "mode": "review" if review else "gallery",
        "generated": html.escape(data.generated_at.strftime("%Y-%m-%d %H:%M UTC")),
        "items": str(len(data.items)),
        "images": str(sum(len(item.files) for item in data.items)),
        "counts": _counts_html(data),
        "credits": _credits_html(data),
        "css": _asset("gallery.css"),
        "js": _asset("gallery.js"),
        "data": document,
    }
    page = _asset("gallery.html")
    # One pass over the template, so a value can never be read as a placeholder.
    parts = page.split("{{")
    out = [parts[0]]
    for part in parts[1:]:
        name, _, rest = part.partition("}}")
        out.append(fields[name] + rest)
    return "".join(out)


def _counts_html(data: GalleryData) -> str:
    rows = []
    for state, count in data.states.items():
        zero = ' class="zero"' if count == 0 else ""
        rows.append(f'<li data-state="{state}"{zero}><b>{count}</b> {state}</li>')
    return '<ul id="counts" aria-label="items per state">' + "".join(rows) + "</ul>"


def _credits_html(data: GalleryData) -> str:
    def row(name: str, charged: int, refunded: int, net: int, extra: str = "") -> str:
        return (
            f'<tr{extra}><td>{html.escape(name)}</td><td class="charged">{charged}</td>'
            f'<td class="refunded">{refunded}</td><td class="net">{net}</td></tr>'
        )

    total = data.credits
    lines = [
        row(model, c.charged, c.refunded, c.net, f' data-model="{html.escape(model)}"')
        for model, c in data.credits_per_model.items()
    ]
    lines.append(row("total", total.charged, total.refunded, total.net, ' class="total"'))
    return (
        '<table id="credits" class="credits"><caption hidden>credits</caption>'
        "<thead><tr><th>credits</th><th>charged</th><th>refunded</th><th>net</th></tr></thead>"
        "<tbody>" + "".join(lines) + "</tbody></table>"
    )


@cache
def _asset(name: str) -> str:
    return (resources.files("batcher.reports") / "gallery_assets" / name).read_text("utf-8")
