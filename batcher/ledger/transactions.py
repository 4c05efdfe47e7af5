"""Read and write transactions over the ledger's engine, and the translation of
SQLAlchemy and DB-API errors into the `LedgerError` tree.

Every query of this package runs in one of two kinds of transaction:

- `Database.read(work)`: never waits on a writer. On SQLite a deferred BEGIN
  reads a snapshot through the WAL while another process holds the write
  lock; on PostgreSQL a READ ONLY, REPEATABLE READ transaction gives every
  statement of a report the same snapshot.
- `Database.write(work)`: on SQLite BEGIN IMMEDIATE takes the write lock up
  front, so a read-then-write (a budget check, a claim) is never overtaken by
  another process; on PostgreSQL a transaction that loses a deadlock or a
  serialization conflict is run again, logged as one line.

`work` is a function of the open connection; its return value is the
transaction's, after the commit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from batcher.errors import (
    ConfigError,
    LedgerBusyError,
    LedgerCorruptError,
    LedgerError,
    LedgerReadOnlyError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], datetime]

# The connection option the SQLite "begin" hook reads (see engine.py): a read
# transaction starts with a deferred BEGIN instead of BEGIN IMMEDIATE.
READ_OPTION = "batcher_read"

# A PostgreSQL transaction chosen as a deadlock victim, or failing a
# serialization check, did nothing: running it again is safe.
CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})
CONFLICT_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Target:
    """Where the ledger lives, for messages: `where` is the SQLite file's path or the URL
    with any password hidden."""

    where: str
    path: Path | None  # the SQLite file, None for a server
    busy_timeout_s: float


class Database:
    """One engine, the ledger's clock, and the two kinds of transaction."""

    def __init__(self, engine: Engine, target: Target, clock: Clock) -> None:
        self.engine = engine
        self.target = target
        self.clock = clock
        self.dialect = engine.dialect.name
        self.postgres = self.dialect == "postgresql"

    def read(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in a read transaction: it never waits on a writer."""
        try:
            with self.engine.connect() as conn:
                if self.postgres:
                    conn.execution_options(
                        isolation_level="REPEATABLE READ", postgresql_readonly=True
                    )
                else:
                    conn.execution_options(**{READ_OPTION: True})
                with conn.begin():
                    return work(conn)
        except SQLAlchemyError as exc:
            raise translate(exc, self.target) from exc

    def write(self, work: Callable[[Connection], T], *, retry: bool = True) -> T:
        """Run `work` in a write transaction, again if PostgreSQL reports a conflict
        (`retry=False` when `work` cannot run twice, e.g. it consumes an iterator)."""
        attempt = 1
        while True:
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except DBAPIError as exc:
                reason = conflict(exc)
                if reason is None or not retry or attempt >= CONFLICT_ATTEMPTS:
                    raise translate(exc, self.target) from exc
                log.warning(
                    "ledger transaction lost a %s; running it again (attempt %d of %d)",
                    reason,
                    attempt + 1,
                    CONFLICT_ATTEMPTS,
                    extra={"event": "ledger.conflict", "reason": reason, "attempt": attempt},
                )
                attempt += 1
            except SQLAlchemyError as exc:
                raise translate(exc, self.target) from exc

    def dispose(self) -> None:
        self.engine.dispose()


# --------------------------------------------------------------------------- errors


def conflict(exc: DBAPIError) -> str | None:
    """'deadlock' or 'serialization conflict' when the transaction may simply be run
    again, else None."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate not in CONFLICT_SQLSTATES:
        return None
    return "deadlock" if sqlstate == "40P01" else "serialization conflict"


def db_message(exc: BaseException) -> str:
    """The first line of what the database said."""
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


def translate(exc: SQLAlchemyError, target: Target) -> LedgerError | ConfigError:
    """The BatcherError that says, in one line naming the ledger, what went wrong."""
    reason = db_message(exc)
    where = target.where
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    code = str(getattr(orig, "sqlite_errorname", "") or "")
    sqlstate = str(getattr(orig, "sqlstate", "") or "")
    if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return LedgerBusyError(
            f"ledger {where} is locked by another process: still busy after "
            f"{target.busy_timeout_s:g} s; try again when it is done",
            where=where,
        )
    if code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return LedgerCorruptError(
            f"ledger {where} is damaged or not a batcher ledger ({reason}); "
            "it was left as it is: restore it from a backup or point --db elsewhere",
            where=where,
        )
    if code.startswith("SQLITE_READONLY") or sqlstate == "25006":
        return LedgerReadOnlyError(
            f"ledger {where} is read-only ({_why_read_only(target.path) or reason})",
            where=where,
        )
    if code.startswith("SQLITE_CANTOPEN") and target.path is not None:
        return _cannot_open(target.path, where, reason)
    if code.startswith("SQLITE_FULL") or sqlstate == "53100":
        return LedgerError(f"ledger {where}: the disk is full ({reason})", where=where)
    return LedgerError(f"ledger {where}: {reason}", where=where)


def _why_read_only(path: Path | None) -> str | None:
    if path is None:
        return None
    if path.exists() and not os.access(path, os.W_OK):
        return "the file is not writable"
    if not os.access(path.parent, os.W_OK):
        return (
            f"its folder {path.parent} is not writable; SQLite writes "
            f"{path.name}-wal and {path.name}-shm beside it"
        )
    return None


def _cannot_open(path: Path, where: str, reason: str) -> LedgerError | ConfigError:
    if not path.parent.is_dir():
        return ConfigError(f"ledger {where}: the folder {path.parent} does not exist")
    if path.is_dir():
        return ConfigError(f"ledger {where} is a folder, not a file")
    if path.exists() and not os.access(path, os.R_OK):
        return LedgerReadOnlyError(f"ledger {where} cannot be read ({reason})", where=where)
    why = _why_read_only(path)
    if why is not None:
        return LedgerReadOnlyError(f"ledger {where} is read-only ({why})", where=where)
    return LedgerError(f"ledger {where} cannot be opened ({reason})", where=where)
