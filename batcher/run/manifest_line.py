"""One line of `out/<batch>/manifest.jsonl`, as a value (DESIGN.md, "Outputs,
provenance and review").

The runner builds a `ManifestLine` when an item finishes (`ManifestLine.of_item`),
has each image finalised (`batcher.run.provenance.finalize_image`, which reads
the line to write the PNG's provenance), then writes
`line.with_files(files).as_json()`. The gallery reads the same shape back
(`batcher.reports.gallery`); the ledger keeps the files too (`SavedFile`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from batcher.ledger import ItemRecord, SavedFile, utcnow
from batcher.scrubber import scrub_optional


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

    def saved(self) -> SavedFile:
        """The same file as the ledger records it (items.files)."""
        return SavedFile(self.path, self.sha256, self.bytes, self.width, self.height)


@dataclass(frozen=True, slots=True)
class ManifestLine:
    """What one item produced and cost: a line when it is created (state
    `submitted`: its project id and charge), superseded by the line written
    when it finishes."""

    key: str
    prompt: str
    model: str
    resolution: str | None  # None: not sent, the server picked
    aspect_ratio: str
    tool: str
    image_count: int
    project_id: str | None
    state: str
    credits_charged: int | None = 0  # None: not known to this run (a render adopted)
    credits_refunded: int = 0
    vars: Mapping[str, str] = field(default_factory=dict)
    finished_at: datetime | None = None
    files: tuple[ImageFile, ...] = ()
    error: str | None = None
    # What `batcher recover` needs beyond the above to rebuild the item in a new
    # ledger: the name its create was sent with, and its place in the job.
    project_name: str | None = None
    ordinal: int | None = None

    @classmethod
    def of_item(
        cls,
        item: ItemRecord,
        state: str,
        *,
        project_id: str | None = None,
        charged: int | None = 0,
        refunded: int = 0,
        files: Sequence[ImageFile] = (),
        error: str | None = None,
        finished_at: datetime | None = None,
    ) -> ManifestLine:
        """The line of `item` ending in `state` now (or at `finished_at`)."""
        settings = item.settings
        return cls(
            key=item.key,
            prompt=item.prompt,
            model=settings.model,
            resolution=settings.resolution,
            aspect_ratio=settings.aspect_ratio,
            tool=settings.tool,
            image_count=settings.image_count,
            project_id=project_id,
            state=state,
            credits_charged=charged,
            credits_refunded=refunded,
            vars=item_vars(item),
            finished_at=finished_at or utcnow(),
            files=tuple(files),
            error=error,
            project_name=item.project_name,
            ordinal=item.ordinal,
        )

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
            "error": scrub_optional(self.error),
            "project_name": self.project_name,
            "ordinal": self.ordinal,
        }


def item_vars(item: ItemRecord) -> Mapping[str, str]:
    """The item's variable values and matrix settings (from the ledger's
    `items.vars`), as text: the manifest and the PNG chunk hold strings."""
    return {name: str(value) for name, value in item.vars.items()}
