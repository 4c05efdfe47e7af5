"""The images the sandbox "generates": small real images that show their prompt.

A human opening a downloaded file sees which prompt, project and image it
belongs to, so a mix-up in the client's file naming is visible at a glance.
They are PNG, JPEG or WebP (SandboxConfig.image_format), whatever the URL's
suffix says. Rendering text costs milliseconds, so finished files are kept in
an LRU cache (repeated downloads are cheap) and the wrapped prompt, shared by
all images of a project, is drawn once.
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from typing import Final

from PIL import Image, ImageDraw, ImageFont

from batcher.sandbox.replies import ImageJob

SIZES: Final = {"1:1": (512, 512), "16:9": (512, 288), "9:16": (288, 512)}
MARGIN: Final = 16
PROMPT_SIZE: Final = 22
FOOTER_SIZE: Final = 13
TEXT: Final = (245, 245, 240)
CONTENT_TYPES: Final = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


class ImageRenderer:
    """Image bytes for an authorised download, cached by (project id, index, format)."""

    def __init__(self, cache_size: int = 4096) -> None:  # files are 1-10 kB each
        self._cache: OrderedDict[tuple[str, int, str], bytes] = OrderedDict()
        self._cache_size = cache_size

    def image(self, job: ImageJob) -> bytes:
        """The bytes of the job's image in its `image_format`."""
        key = (job.project_id, job.index, job.image_format)
        data = self._cache.get(key)
        if data is not None:
            self._cache.move_to_end(key)
            return data
        data = render_image(job)
        self._cache[key] = data
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return data

    def png(self, job: ImageJob) -> bytes:
        """The job's image as PNG, whatever its `image_format`."""
        if job.image_format != "png":
            job = replace(job, image_format="png")
        return self.image(job)


def render_png(job: ImageJob) -> bytes:
    return render_image(replace(job, image_format="png"))


def render_image(job: ImageJob) -> bytes:
    """One image: the wrapped prompt on a colour of its own, then who it is."""
    image = _prompt_block(job.prompt, job.aspect_ratio).copy()
    draw = ImageDraw.Draw(image)
    footer = _font(FOOTER_SIZE)
    height = image.height
    lines = [
        f"image {job.index + 1} of {job.image_count} · {job.model}",
        job.project_id,
    ]
    y = height - MARGIN - len(lines) * (FOOTER_SIZE + 4)
    for line in lines:
        draw.text((MARGIN, y), line, font=footer, fill=1)
        y += FOOTER_SIZE + 4
    buffer = io.BytesIO()
    if job.image_format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
    elif job.image_format == "webp":
        image.convert("RGB").save(buffer, format="WEBP", quality=80, method=0)
    else:
        image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


@lru_cache(maxsize=64)
def _prompt_block(prompt: str, aspect_ratio: str) -> Image.Image:
    """The image without its footer; a palette image, which is fast to draw and encode."""
    width, height = SIZES.get(aspect_ratio, SIZES["1:1"])
    image = Image.new("P", (width, height), 0)
    image.putpalette([*_background(prompt), *TEXT])
    draw = ImageDraw.Draw(image)
    font = _font(PROMPT_SIZE)
    line_height = PROMPT_SIZE + 6
    room = (height - 2 * MARGIN - 2 * (FOOTER_SIZE + 4) - 8) // line_height
    lines = wrap(prompt, font, width - 2 * MARGIN, max_lines=room + 1)
    if len(lines) > room:
        lines = [*lines[: max(room - 1, 0)], "…"]
    y = MARGIN
    for line in lines:
        draw.text((MARGIN, y), line, font=font, fill=1)
        y += line_height
    return image


def wrap(text: str, font: Font, width: int, max_lines: int = 40) -> list[str]:
    """Greedy word wrap by rendered width; a word wider than a line is cut.

    Stops after `max_lines`: nothing beyond fits on a 512 px image anyway.
    """

    def fits(piece: str) -> bool:
        # No glyph is narrower than 2 px, so a long piece is rejected unmeasured:
        # a 100,000-character prompt costs no more than a short one.
        return len(piece) <= width // 2 and font.getlength(piece) <= width

    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            if len(lines) >= max_lines:
                return lines
            candidate = f"{line} {word}" if line else word
            if fits(candidate):
                line = candidate
                continue
            if line:
                lines.append(line)
            while len(word) > 1 and not fits(word) and len(lines) < max_lines:
                cut = _fitting_prefix(word, fits)
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines[:max_lines]


def _fitting_prefix(word: str, fits: Callable[[str], bool]) -> int:
    """The length of the longest prefix of `word` that fits (at least 1), by bisection."""
    low, high = 1, len(word)
    while low < high:
        middle = (low + high + 1) // 2
        if fits(word[:middle]):
            low = middle
        else:
            high = middle - 1
    return low


def _background(prompt: str) -> tuple[int, int, int]:
    """A dark colour derived from the prompt: the same prompt, the same colour."""
    digest = hashlib.blake2b(prompt.encode("utf-8"), digest_size=3).digest()
    return (30 + digest[0] % 90, 30 + digest[1] % 90, 30 + digest[2] % 90)


@lru_cache(maxsize=4)
def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()
