"""The rescue file: answers the ledger could not record, kept on disk until it can.

When the ledger stays unavailable past `--ledger-hold` (or its file vanished
under the run), every outcome that arrived (a create's project id and charge,
a render's end) is appended here as one JSON line, fsynced before the run
goes on, so that an answer that arrived is never lost:

    {"ledger": ..., "batch": ..., "key": ..., "project_id": ..., "credits": ...,
     "time": ..., "op": {"type": "Created", ...}}

The file lives beside a SQLite ledger (`ledger.db.rescue.jsonl`); for
PostgreSQL, or when that folder cannot be written (a full disk), in the
current folder, named after the database (`batcher-rescue-<name>.jsonl`).
Each line names its ledger, so a file in a shared folder is only ever applied
to the ledger it belongs to.

The next command that opens the ledger applies the file first (`apply_rescue`).
Items are found by batch name and key, not by row id, so the file also applies
to a ledger rebuilt by `batcher recover`. Applying is idempotent: a charge
already recorded, or an item already past the state an operation expects, is
skipped; a file applied whole is renamed `*.applied`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from batcher.errors import LedgerBusyError
from batcher.ledger import writes
from batcher.ledger.tables import BATCHES, CREDITS, ITEMS
from batcher.ledger.transactions import Database, Target, translate
from batcher.ledger.values import (
    BeginSend,
    Created,
    LedgerOp,
    ReleaseClaims,
    RenderFinished,
    SendFailed,
    files_from_json,
    files_to_json,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

SUFFIX = ".rescue.jsonl"
APPLIED = ".applied"
_KINDS: dict[str, type[Created | SendFailed | RenderFinished]] = {
    "Created": Created,
    "SendFailed": SendFailed,
    "RenderFinished": RenderFinished,
}


def rescue_paths(target: Target) -> tuple[Path, ...]:
    """Where the rescue file of this ledger goes, in order of preference."""
    fallback = Path.cwd() / f"batcher-rescue-{_name(target)}.jsonl"
    if target.path is None:
        return (fallback,)
    return (target.path.with_name(target.path.name + SUFFIX), fallback)


def _name(target: Target) -> str:
    if target.path is not None:
        return target.path.name
    try:
        name = make_url(target.where).database or "ledger"
    except ArgumentError:
        name = "ledger"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def worth_rescuing(op: LedgerOp) -> bool:
    """An intent (BeginSend) is refused instead (nothing is sent); a released
    claim lapses by itself."""
    return not isinstance(op, BeginSend | ReleaseClaims)


def entry(
    op: LedgerOp, *, ledger: str, batch: str, key: str | None, at: datetime
) -> dict[str, Any]:
    """The JSON line of one operation."""
    fields = asdict(op)
    if isinstance(op, RenderFinished) and op.files is not None:
        fields["files"] = files_to_json(op.files)
    project_id = getattr(op, "project_id", None)
    credits = (
        op.credits_charged
        if isinstance(op, Created)
        else op.refund
        if isinstance(op, RenderFinished)
        else 0
    )
    return {
        "ledger": ledger,
        "batch": batch,
        "key": key,
        "project_id": project_id,
        "credits": credits,
        "time": at.isoformat(),
        "op": {"type": type(op).__name__, **fields},
    }


class RescueFile:
    """Appends lines to the first of `paths` that can be written, each fsynced."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self.used: Path | None = None

    @property
    def path(self) -> Path:
        return self.used or self._paths[0]

    def append(self, lines: Iterable[Mapping[str, Any]]) -> Path:
        """Write and fsync `lines`; raises OSError if no place can take them."""
        text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
        if not text:
            return self.path
        errors: list[str] = []
        for path in ([self.used] if self.used else []) + self._paths:
            try:
                _append(path, text)
            except OSError as exc:
                errors.append(f"{path}: {exc.strerror or exc}")
                continue
            self.used = path
            return path
        raise OSError("; ".join(errors))


def _append(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        data = text.encode()
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    except OSError:
        os.close(fd)
        raise
    os.close(fd)


# --------------------------------------------------------------------------- applying


@dataclass(frozen=True, slots=True)
class RescueApplied:
    """What applying one rescue file did."""

    path: Path
    applied: int  # operations recorded now
    already: int  # recorded before (a file applied twice, or a group that did commit)
    kept: int  # for a batch or item this ledger does not know (recover it, then open again)


def apply_rescue(db: Database, *, wait: bool = True) -> list[RescueApplied]:
    """Apply every rescue file of this ledger (see the module doc); one result each.

    `wait=False` (reports, which never wait on a writer): if another process holds
    SQLite's write lock, the file is left for the next command and said so."""
    done = []
    for index, path in enumerate(rescue_paths(db.target)):
        if path.is_file():
            # The file beside a SQLite ledger is its own, wherever the two were
            # moved; one in the current folder must name this ledger.
            beside = index == 0 and db.target.path is not None
            result = _apply_file(db, path, db.target.where if not beside else None, wait)
            if result is not None:
                done.append(result)
    return done


def _apply_file(db: Database, path: Path, ledger: str | None, wait: bool) -> RescueApplied | None:
    mine: list[dict[str, Any]] = []
    others = 0
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            if ledger is None or line["ledger"] == ledger:
                mine.append(line)
            else:
                others += 1
        except (ValueError, KeyError, TypeError):
            # A torn last line (killed mid-write, before its fsync): nothing was
            # promised for it.
            log.warning("%s:%d: not a rescue line; skipped", path, number)
    if not mine:
        return None
    try:
        applied, already, kept = _write(db, lambda conn: _apply_lines(db, conn, mine), wait)
    except LedgerBusyError:
        log.warning(
            "rescue file %s waits: the ledger is busy (another process is writing); the "
            "next command that opens it applies the file",
            path,
            extra={"event": "ledger.rescue_waits", "path": str(path)},
        )
        return None
    if kept == 0 and others == 0:
        path.replace(path.with_name(path.name + APPLIED))
    result = RescueApplied(path, applied, already, kept)
    log.warning(
        "applied the rescue file %s first: %d answers recorded now, %d already there%s",
        path,
        applied,
        already,
        f", {kept} kept for a batch or item this ledger does not know" if kept else "",
        extra={"event": "ledger.rescue_applied", "path": str(path), "applied": applied},
    )
    return result


def _write(db: Database, work: Callable[[Connection], T], wait: bool) -> T:
    """A write transaction; with `wait=False` on SQLite, one that gives up at once
    (LedgerBusyError) if another process holds the write lock."""
    if wait or db.target.path is None:
        return db.write(work, retry=False)
    with db.engine.connect() as conn:
        # On the driver's connection: through SQLAlchemy the PRAGMA would begin a
        # transaction, which takes the write lock first (BEGIN IMMEDIATE, engine.py).
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.execute("PRAGMA busy_timeout=0")
        try:
            with conn.begin():
                return work(conn)
        except SQLAlchemyError as exc:
            raise translate(exc, db.target) from exc
        finally:
            raw.execute(f"PRAGMA busy_timeout={int(db.target.busy_timeout_s * 1000)}")


def _apply_lines(
    db: Database, conn: Connection, lines: list[dict[str, Any]]
) -> tuple[int, int, int]:
    applied = already = kept = 0
    for line in lines:
        # By key; a line without one (an item the run never named) by its row id.
        which = (
            ITEMS.c.key == line["key"]
            if line.get("key") is not None
            else ITEMS.c.id == line["op"].get("item_id")
        )
        found = conn.execute(
            select(ITEMS.c.id, ITEMS.c.batch_id, ITEMS.c.state, ITEMS.c.project_id)
            .join(BATCHES, BATCHES.c.id == ITEMS.c.batch_id)
            .where(BATCHES.c.name == line["batch"], which)
        ).first()
        if found is None:
            kept += 1
            continue
        op = _op(line["op"], item_id=found.id, batch_id=found.batch_id)
        if op is None:
            kept += 1
        elif _due(conn, op, found.state, found.project_id):
            writes.apply_in(db, conn, [op])
            applied += 1
        else:
            already += 1
    return applied, already, kept


def _op(fields: Mapping[str, Any], *, item_id: int, batch_id: int) -> LedgerOp | None:
    kind = _KINDS.get(str(fields.get("type")))
    if kind is None:
        return None
    values = {k: v for k, v in fields.items() if k != "type"}
    values.update(item_id=item_id, batch_id=batch_id)
    if kind is RenderFinished and values.get("files") is not None:
        values["files"] = files_from_json(values["files"])
    try:
        op = kind(**values)
    except TypeError:
        return None
    # Whoever held the claim is gone: the item is free for the next worker.
    return replace(op, keep_claim=False) if isinstance(op, Created) else op


def _due(conn: Connection, op: LedgerOp, state: str, project_id: str | None) -> bool:
    """Whether the ledger still lacks `op` (the state it moves the item from)."""
    if isinstance(op, Created):
        charged = conn.scalar(
            select(CREDITS.c.id).where(
                CREDITS.c.kind == "charge", CREDITS.c.project_id == op.project_id
            )
        )
        return charged is None and state in ("pending", "sending", "unconfirmed")
    if isinstance(op, SendFailed):
        return state == "sending"
    if isinstance(op, RenderFinished):
        return state == "submitted" and project_id == op.project_id
    return False
