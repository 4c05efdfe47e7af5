"""The gallery at 10,000 items: the page's size, the time to build it, and the
time to make (then to check) the thumbnails of 10,000 sandbox-sized PNGs.

    python bench/gallery_scale.py [--items 10000] [--images 2000]

Thumbnails are timed on `--images` real PNGs (the sandbox's renderer) and
scaled to `--items`; the page is built for `--items` synthetic items shaped
like a templated nightly batch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from batcher.folders import slug
from batcher.reports import thumbnails
from batcher.reports.gallery_data import GalleryData, GalleryFile, GalleryItem
from batcher.reports.gallery_page import render_page
from batcher.sandbox.emulator import ImageJob
from batcher.sandbox.images import render_png


def synthetic(count: int) -> GalleryData:
    colors = ["red", "teal", "matte black", "ivory", "cobalt"]
    items = []
    for n in range(count):
        color, product = colors[n % len(colors)], f"product {n // len(colors):04d}"
        prompt = f"A {color} {product} on a white background, studio light"
        key = f"{n:020x}"
        items.append(
            GalleryItem(
                key=key,
                ordinal=n,
                state="complete",
                prompt=prompt,
                model="z-image-turbo",
                resolution="1k",
                aspect_ratio="1:1",
                tool="general",
                image_count=1,
                vars={"color": color, "product": product},
                project_id=f"cmx{n:022d}",
                credits_charged=5,
                files=(
                    GalleryFile(
                        path=f"{n + 1:05d}-{slug(prompt)}-{key}-1.png",
                        width=1024,
                        height=1024,
                        thumb=f"{n:016x}.jpg",
                    ),
                ),
            )
        )
    return GalleryData(batch="nightly", items=tuple(items), rows="color", cols="product")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=2_000)
    args = parser.parse_args()

    data = synthetic(args.items)
    started = time.perf_counter()
    page = render_page(data)
    built = time.perf_counter() - started
    size = len(page.encode("utf-8"))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sources = []
        for n in range(args.images):
            job = ImageJob(f"p{n}", 0, 1, f"prompt number {n} of the bench", "1:1", "m")
            path = folder / f"{n:05d}.png"
            path.write_bytes(render_png(job))
            sources.append(path)
            if n % 500 == 0:
                print(f"rendered {n} images", file=sys.stderr)
        started = time.perf_counter()
        made = thumbnails.ensure(folder, sources)
        making = time.perf_counter() - started
        started = time.perf_counter()
        thumbnails.ensure(folder, sources)
        checking = time.perf_counter() - started
    scale = args.items / args.images
    print("| measure | value |")
    print("|---|---|")
    print(f"| page size, {args.items:,} items | {size:,} bytes ({size / 1e6:.2f} MB) |")
    print(f"| page build, {args.items:,} items | {built:.2f} s |")
    print(f"| thumbnails made ({made.made:,}), scaled to {args.items:,} | {making * scale:.1f} s |")
    print(f"| thumbnails checked again, scaled to {args.items:,} | {checking * scale:.2f} s |")


if __name__ == "__main__":
    main()
