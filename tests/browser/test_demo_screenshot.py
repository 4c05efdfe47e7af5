"""The README's screenshot: `jobs/demo.yaml` run against the sandbox, its
gallery opened offline. Saved in the test's temporary folder; with
BATCHER_SCREENSHOT_DIR set, also there (that is how docs/gallery.png is made:
`BATCHER_SCREENSHOT_DIR=docs pytest tests/browser/test_demo_screenshot.py`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from batches import batcher
from browser_page import Page
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.browser]

DEMO = Path(__file__).resolve().parents[2] / "jobs" / "demo.yaml"


def test_the_demo_batch_gallery(offline_page: Page, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    out = tmp_path / "out" / "demo"
    run = batcher("run", str(DEMO), "--sandbox", "--db", db_url, "--out", str(out))
    assert run.returncode == 0, run.stderr
    gallery = batcher("gallery", "demo", "--db", db_url, "--out", str(out))
    assert gallery.returncode == 0, gallery.stderr
    offline_page.goto(Path(gallery.stdout.strip()).as_uri())
    offline_page.wait_ready()
    widths = offline_page.images_loaded("#cards figure.image img.thumb")
    assert len(widths) == 14 and all(w > 0 for w in widths)
    assert offline_page.blocked == []
    shot = tmp_path / "gallery.png"
    offline_page.screenshot(path=str(shot))
    with Image.open(shot) as image:
        assert image.size == (1280, 900)
    wanted = os.environ.get("BATCHER_SCREENSHOT_DIR")
    if wanted:
        shutil.copyfile(shot, Path(wanted) / "gallery.png")
