"""The one call that writes a batch's gallery page, with its thumbnails.

    result = write_gallery(ledger, "demo")          # out/demo/index.html
    print(result.path, result.items, result.thumbnails_made)

`batcher.reports.gallery_data` reads what the page shows, `gallery_page`
renders it as one static HTML page, `thumbnails` keeps `.thumbs/` in step.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from batcher.errors import OutputError
from batcher.ledger import Ledger
from batcher.reports.gallery_data import (
    PAGE_NAME,
    GalleryData,
    GalleryResult,
    gallery_data,
    gallery_folder,
)


def with_thumbnails(data: GalleryData, folder: Path) -> tuple[GalleryData, int]:
    """`data` with each file's thumbnail (made if missing or stale) and its
    size when the manifest did not know it; and how many were made."""
    from batcher.reports import thumbnails  # Pillow loads only when a page is built

    sources = [folder / f.path for item in data.items for f in item.files]
    made = thumbnails.ensure(folder, sources)
    items = []
    for item in data.items:
        files = []
        for f in item.files:
            thumb = made.thumbs.get(folder / f.path)
            if thumb is None:
                files.append(f)
                continue
            files.append(
                replace(
                    f,
                    thumb=thumb.name,
                    width=f.width if f.width is not None else thumb.source_width,
                    height=f.height if f.height is not None else thumb.source_height,
                )
            )
        items.append(replace(item, files=tuple(files)))
    return replace(data, items=tuple(items)), made.made


def write_gallery(
    ledger: Ledger,
    batch_name: str,
    *,
    out_dir: Path | None = None,
    output: Path | None = None,
    rows: str | None = None,
    cols: str | None = None,
) -> GalleryResult:
    """Write the batch's static gallery (default `<batch folder>/index.html`)
    and its thumbnails; what `batcher gallery` and the end of a run call."""
    from batcher.reports.gallery_page import render_page

    folder = gallery_folder(ledger, batch_name, out_dir)
    data = gallery_data(ledger, batch_name, folder, rows=rows, cols=cols)
    data, made = with_thumbnails(data, folder)
    target = output if output is not None else folder / PAGE_NAME
    base = Path(os.path.relpath(folder.absolute(), target.absolute().parent)).as_posix()
    page = render_page(data, base="" if base == "." else base + "/")
    _write_atomically(target, page)
    return GalleryResult(
        path=target,
        items=len(data.items),
        images=sum(len(item.files) for item in data.items),
        thumbnails_made=made,
    )


def _write_atomically(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError.from_os_error(target, exc) from None
