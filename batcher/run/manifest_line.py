"""One line of `out/<batch>/manifest.jsonl`, as a value (DESIGN.md, "Outputs,
provenance and review").

The runner builds a `ManifestLine` when an item finishes, has each image
finalised (`batcher.run.provenance.finalize_image`, which reads the line to
write the PNG's provenance), then writes `line.with_files(files).as_json()`.
The gallery reads the same shape back (`batcher.reports.gallery`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class ImageFile:
    """One saved image as the manifest lists it."""

    path: str
    sha256: str  # of the file as saved (with its provenance chunks, if any)
    bytes: int
    width: int
    height: int

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "width": self.width,
            "height": self.height,
        }


@dataclass(frozen=True, slots=True)
class ManifestLine:
    """What one finished item produced and cost."""

    key: str
    prompt: str
    model: str
    resolution: str | None  # None: not sent, the server picked
    aspect_ratio: str
    tool: str
    image_count: int
    project_id: str | None
    state: str
    credits_charged: int = 0
    credits_refunded: int = 0
    vars: Mapping[str, str] = field(default_factory=dict)
    finished_at: datetime | None = None
    files: tuple[ImageFile, ...] = ()
    error: str | None = None

    def with_files(self, files: Sequence[ImageFile]) -> ManifestLine:
        return replace(self, files=tuple(files))

    def as_json(self) -> dict[str, Any]:
        """The JSON object of the line, keys in a stable order."""
        return {
            "key": self.key,
            "prompt": self.prompt,
            "model": self.model,
            "resolution": self.resolution,
            "aspect_ratio": self.aspect_ratio,
            "tool": self.tool,
            "image_count": self.image_count,
            "vars": dict(self.vars),
            "project_id": self.project_id,
            "state": self.state,
            "credits_charged": self.credits_charged,
            "credits_refunded": self.credits_refunded,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "files": [f.as_json() for f in self.files],
            "error": self.error,
        }
