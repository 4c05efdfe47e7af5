"""The wire body of a create: one item's prompt and settings as the API wants them."""

from __future__ import annotations

from typing import Any

from batcher.jobfile.items import ItemSettings


def create_body(prompt: str, settings: ItemSettings, name: str) -> dict[str, Any]:
    """The JSON body of `POST /v1/ai-image-generator` for one item."""
    body: dict[str, Any] = {
        "image_count": settings.image_count,
        "model": settings.model,
        "aspect_ratio": settings.aspect_ratio,
        "style": {"prompt": prompt, "tool": settings.tool},
        "name": name,
    }
    if settings.resolution is not None:
        body["resolution"] = settings.resolution
    return body
