"""Plain values shared by job parsing, planning, the ledger and the API client."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

# An item's variable values and matrix settings (image_count is a number).
ItemVars = Mapping[str, str | int]
NO_VARS: Final[ItemVars] = MappingProxyType({})


def _no_vars() -> ItemVars:
    return NO_VARS


@dataclass(frozen=True, slots=True)
class ItemSettings:
    """The effective generation settings of one prompt, after defaults apply.

    `resolution` is None when the job does not set one: nothing is sent and the
    server picks, as it does for the deprecated `auto`.
    """

    model: str
    resolution: str | None
    aspect_ratio: str
    tool: str
    image_count: int
    name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "resolution": self.resolution,
            "aspect_ratio": self.aspect_ratio,
            "tool": self.tool,
            "image_count": self.image_count,
            "name": self.name,
        }


@dataclass(frozen=True, slots=True)
class JobItem:
    """One prompt of a job, ready to become a ledger item."""

    ordinal: int  # position in the job, from 0
    key: str
    prompt: str
    settings: ItemSettings
    path: str  # the file the prompt came from (job file or prompts file)
    line: int
    # A template entry's variable values and matrix settings for this combination,
    # in expansion order; empty for other entries. Not part of the key: the
    # resolved prompt and the effective settings already are.
    vars: ItemVars = field(default_factory=_no_vars, hash=False)


KEY_LENGTH = 20  # hex digits: 80 bits, no collision in any batch a person runs


def identity_digest(prompt: str, settings: ItemSettings) -> bytes:
    """What makes two entries "identical" for the occurrence count of item keys.

    The sha256 of `json.dumps([prompt, settings.as_dict()], sort_keys=True,
    ensure_ascii=False)`, built from cached pieces: the keys of every ledger
    depend on these exact bytes, and json.dumps was half the cost of planning
    100,000 items.
    """
    head, tail = _settings_json(
        settings.aspect_ratio,
        settings.image_count,
        settings.model,
        settings.resolution,
        settings.tool,
    )
    name = "null" if settings.name is None else _json_text(settings.name)
    canonical = f"[{_json_text(prompt)}, {head}{name}{tail}]"
    return hashlib.sha256(canonical.encode("utf-8")).digest()


# What json.dumps(ensure_ascii=False) writes for a str, at any depth.
_json_text: Callable[[str], str] = json.encoder.encode_basestring


@functools.lru_cache(maxsize=4096)
def _settings_json(
    aspect_ratio: str, image_count: int, model: str, resolution: str | None, tool: str
) -> tuple[str, str]:
    """The settings' canonical JSON (keys sorted) before and after the name's value,
    which is the part that varies item by item when a template names items."""
    dumps = functools.partial(json.dumps, ensure_ascii=False)
    head = (
        f'{{"aspect_ratio": {dumps(aspect_ratio)}, "image_count": {dumps(image_count)}, '
        f'"model": {dumps(model)}, "name": '
    )
    tail = f', "resolution": {dumps(resolution)}, "tool": {dumps(tool)}}}'
    return head, tail


def item_key(batch_name: str, identity: bytes, occurrence: int) -> str:
    """Stable key of an item: batch, prompt and settings (via `identity`), occurrence index.

    Re-reading a file yields the same keys and appending prompts leaves the
    others untouched, because nothing here depends on an entry's position
    except among entries identical to it.
    """
    material = b"%s\x00%s\x00%d" % (batch_name.encode("utf-8"), identity, occurrence)
    return hashlib.sha256(material).hexdigest()[:KEY_LENGTH]


def project_name(batch_name: str, key: str, settings: ItemSettings) -> str:
    """The `name` sent with a create: the user's, or one that finds the item in the library."""
    if settings.name:
        return settings.name
    return f"{batch_name} {key}"
