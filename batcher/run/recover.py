"""A batch whose ledger was lost (deleted, emptied, replaced): refused by `run`,
rebuilt by `batcher recover BATCH --from-manifest out/BATCH/manifest.jsonl`.

The sent log beside the manifest (`.sent.jsonl`) has a line for every item
when it is created (its project id and charge), the manifest one when it
finishes, so together they hold what a rebuild needs: key, prompt, settings,
project name, place in the job, project id, credits and state. `recover`
rebuilds the items from the latest line per key
(batcher.ledger.rebuild), applies any rescue file the lost run left
(batcher.ledger.rescue), and polls every known project again, as `reconcile`
does, recording refunds that came after.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

from batcher.client.magic_hour import MagicHourClient
from batcher.errors import ConfigError, InputError, OutputError, Problem
from batcher.folders import MANIFEST, SENT_LOG
from batcher.jobfile.items import ItemSettings, project_name
from batcher.ledger import Ledger, SavedFile
from batcher.ledger.rebuild import RebuildCounts, RebuiltItem
from batcher.ledger.rescue import RescueApplied
from batcher.reports.reconcile import ReconcileReport, reconcile
from batcher.run.endpoint import ENDPOINT_SETTING
from batcher.settings import ApiConfig

log = logging.getLogger(__name__)

_TEXT_FIELDS = ("key", "prompt", "model", "aspect_ratio", "tool", "state")


# --------------------------------------------------------------------------- run refuses


def refuse_lost_batch(ledger: Ledger, name: str, folder: Path) -> None:
    """Refuse (exit 2, nothing sent) to start batch `name` afresh while its output
    folder's manifest lists items: its ledger was lost, and a fresh start would pay
    for every one of them again."""
    if ledger.get_batch(name) is not None:
        return
    manifest = folder / MANIFEST
    sent, finished = _count_lines(folder / SENT_LOG), _count_lines(manifest)
    if sent or finished:
        raise ConfigError(
            f"batch {name!r} is not in ledger {ledger.target.where}, but its output folder "
            f"{folder} records {sent} creates sent and {finished} items finished: the "
            "ledger was lost (deleted, emptied or another --db), and starting afresh "
            "would pay for those items again; rebuild it first with "
            f"`batcher recover {name} --from-manifest {manifest}`, or move "
            "that folder away to start the batch anew"
        )


def _count_lines(path: Path) -> int:
    try:
        with path.open(encoding="utf-8") as lines:
            return sum(1 for line in lines if line.strip())
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise OutputError.from_os_error(path, exc, action="read") from None


# --------------------------------------------------------------------------- the manifest


def read_manifest(path: Path, batch: str) -> list[RebuiltItem]:
    """The latest line per key of a manifest and of the sent log beside it (the
    creates accepted, written before their renders end), as items to rebuild, in
    job order; a manifest line supersedes a sent one.

    A line that is not JSON (cut short by a crash or a full disk) is skipped with
    a warning; a JSON line without what a rebuild needs is bad input (InputError
    naming the file, line and field), and nothing is written.
    """
    texts = []
    for source in (path.with_name(SENT_LOG), path):
        try:
            texts.append((source, source.read_text(encoding="utf-8")))
        except FileNotFoundError:
            continue  # nothing finished yet, or nothing created: the other may hold it
        except OSError as exc:
            raise OutputError.from_os_error(source, exc, action="read") from None
    if not texts:
        raise ConfigError(f"{path}: no such manifest")
    latest: dict[str, tuple[int, Path, int, dict[str, Any]]] = {}
    charges: dict[tuple[str, str], int] = {}  # (key, project id) -> the charge a line gave
    order = 0
    for source, text in texts:
        for number, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                log.warning("%s:%d: not a JSON line (cut short?), skipped", source, number)
                continue
            _check(source, number, line)
            key, project = line["key"], line.get("project_id")
            if project and isinstance(line.get("credits_charged"), int):
                charges[(key, project)] = line["credits_charged"]
            order += 1
            latest[key] = (order, source, number, line)
    items = [
        _item(source, number, line, batch, charges)
        for _, source, number, line in sorted(latest.values(), key=lambda entry: entry[0])
    ]
    items.sort(key=lambda item: (item.ordinal, item.line))
    return items


def _check(path: Path, number: int, line: Any) -> None:
    def bad(field: str | None, message: str) -> InputError:
        return InputError(str(Problem(str(path), number, field, message)))

    if not isinstance(line, dict):
        raise bad(None, "not a manifest line (a JSON object)")
    for field in _TEXT_FIELDS:
        if not isinstance(line.get(field), str) or not line[field]:
            raise bad(field, "missing or not text")
    count = line.get("image_count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise bad("image_count", "missing or not a positive whole number")
    for field in ("credits_charged", "credits_refunded", "ordinal"):
        value = line.get(field)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise bad(field, "not a whole number of 0 or more")
    for field in ("project_id", "resolution", "error", "project_name"):
        if line.get(field) is not None and not isinstance(line[field], str):
            raise bad(field, "not text")


def _item(
    path: Path,
    number: int,
    line: Mapping[str, Any],
    batch: str,
    charges: Mapping[tuple[str, str], int],
) -> RebuiltItem:
    settings = ItemSettings(
        model=line["model"],
        resolution=line.get("resolution"),
        aspect_ratio=line["aspect_ratio"],
        tool=line["tool"],
        image_count=line["image_count"],
    )
    key, project = line["key"], line.get("project_id") or None
    name = line.get("project_name") or project_name(batch, key, settings)
    if name != project_name(batch, key, settings):
        settings = ItemSettings(**{**settings.as_dict(), "name": name})
    return RebuiltItem(
        key=key,
        ordinal=line["ordinal"] if isinstance(line.get("ordinal"), int) else number,
        prompt=line["prompt"],
        settings=settings,
        project_name=name,
        state=line["state"],
        project_id=project,
        charged=charges.get((key, project), 0) if project else 0,
        refunded=int(line.get("credits_refunded") or 0) if project else 0,
        files=tuple(_files(line.get("files"))),
        error=line.get("error"),
        source=str(path),
        line=number,
    )


def _files(value: Any) -> list[SavedFile]:
    if not isinstance(value, list):
        return []
    found = []
    for entry in value:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            found.append(
                SavedFile(
                    entry["path"],
                    str(entry.get("sha256") or ""),
                    int(entry.get("bytes") or 0),
                    int(entry.get("width") or 0),
                    int(entry.get("height") or 0),
                )
            )
    return found


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True, slots=True)
class RecoverReport:
    """What `batcher recover` rebuilt and found."""

    batch: str
    manifest: Path
    rebuilt: RebuildCounts
    rescued: tuple[RescueApplied, ...]
    polled: ReconcileReport
    in_doubt: int  # sent, answer never recorded: `resume --resend-unconfirmed` decides

    @property
    def items(self) -> int:
        return sum(self.rebuilt.states.values())


# --------------------------------------------------------------------------- recover


async def recover_batch(
    name: str, manifest: Path, *, api: ApiConfig, url: str, concurrency: int
) -> RecoverReport:
    """`batcher recover`: see the module doc. The manifest is read and checked before
    the ledger is touched."""
    items = await anyio.to_thread.run_sync(read_manifest, manifest, name)
    if not items:
        raise ConfigError(f"{manifest}: the manifest lists no items; nothing to recover")
    ledger = await anyio.to_thread.run_sync(functools.partial(Ledger.open, url, create=True))
    with ledger:
        rebuilt = await anyio.to_thread.run_sync(
            functools.partial(
                ledger.rebuild_batch, name, items, settings={ENDPOINT_SETTING: api.base_url}
            )
        )
        log.info(
            "rebuilt batch %s from %s: %d items",
            name,
            manifest,
            len(items),
            extra={"event": "recover.rebuilt", "items": len(items)},
        )
        # The lost run's answers that reached only the rescue file: now that the
        # items exist again (found by key), they can be recorded.
        rescued = await anyio.to_thread.run_sync(ledger.apply_rescue)
        async with MagicHourClient(api, concurrency=concurrency) as client:
            polled = await reconcile(ledger, client, name, concurrency=concurrency)
        batch = await anyio.to_thread.run_sync(ledger.get_batch, name)
        assert batch is not None
        states = await anyio.to_thread.run_sync(ledger.state_counts, batch.id)
    return RecoverReport(
        batch=name,
        manifest=manifest,
        rebuilt=RebuildCounts(
            rebuilt.batch_id,
            {state: n for state, n in states.items() if n},
            rebuilt.charged,
            rebuilt.refunded + polled.credits_refunded,
        ),
        rescued=tuple(rescued),
        polled=polled,
        in_doubt=states.get("unconfirmed", 0),
    )
