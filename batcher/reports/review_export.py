"""`batcher review BATCH --export csv|json`: the decisions in force, one row per
reviewed image, with the item it belongs to. Images are numbered from 1, as
in the PNGs' `parameters` ("Image: k of n")."""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Final

from batcher.errors import ConfigError
from batcher.ledger import Ledger

COLUMNS: Final = (
    "key",
    "image",
    "verdict",
    "note",
    "reviewed_at",
    "prompt",
    "model",
    "resolution",
    "aspect_ratio",
    "tool",
    "project_id",
    "file",
)


def export_rows(ledger: Ledger, batch_name: str) -> list[dict[str, Any]]:
    batch = ledger.get_batch(batch_name)
    if batch is None:
        raise ConfigError(f"no batch named {batch_name!r} in the ledger")
    return [
        {
            "key": row.item_key,
            "image": row.image + 1,
            "verdict": row.verdict,
            "note": row.note,
            "reviewed_at": row.at.isoformat(),
            "prompt": row.prompt,
            "model": row.model,
            "resolution": row.resolution,
            "aspect_ratio": row.aspect_ratio,
            "tool": row.tool,
            "project_id": row.project_id,
            "file": row.file,
        }
        for row in ledger.reviewed_images(batch.id)
    ]


def export_json(batch_name: str, rows: list[dict[str, Any]]) -> str:
    picked = sum(1 for row in rows if row["verdict"] == "pick")
    document = {
        "batch": batch_name,
        "reviews": rows,
        "picked": picked,
        "rejected": len(rows) - picked,
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def export_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: "" if row[name] is None else row[name] for name in COLUMNS})
    return buffer.getvalue()
