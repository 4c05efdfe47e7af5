"""Opening a ledger: the URL checked, the engine made, the schema brought to head.

Only two backends are supported: SQLite, a file on this machine (WAL mode,
full fsync, one writer at a time), and PostgreSQL, for several machines on one
batch. Everything that can be wrong with a `--db` value is found here, before
anything is sent, and said in one line that names the file or the URL (its
password hidden):

- not a URL, a backend other than these two, `sqlite://` with no file (an
  in-memory ledger would forget everything at exit), or a SQLite file in a
  folder that does not exist: ConfigError (exit 2);
- a file that is not a SQLite database or is damaged, a read-only file or
  folder: LedgerCorruptError / LedgerReadOnlyError (exit 2), the file untouched;
- a schema revision this batcher does not know (a newer batcher wrote it), or
  a migration Alembic refuses: LedgerVersionError (exit 2).

Opening reads the schema's revision in a read transaction, so a reporting
command never waits on a run that holds the write lock; only a ledger behind
head takes it, to migrate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from batcher.errors import ConfigError, LedgerMissingError, LedgerVersionError
from batcher.ledger import migrate
from batcher.ledger.transactions import READ_OPTION, Clock, Database, Target

DEFAULT_BUSY_TIMEOUT_S = 30.0
BACKENDS = ("sqlite", "postgresql")
URL_HINT = "use sqlite:///PATH or postgresql+psycopg://USER@HOST/DATABASE"


def display_url(url: str) -> str:
    """The URL with any password hidden, for messages; a relative SQLite path made
    absolute (a message read from cron's mail must say which file, wherever it ran)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    database = parsed.database or ""
    relative = database not in ("", ":memory:") and not database.startswith("file:")
    if parsed.get_backend_name() == "sqlite" and relative and not Path(database).is_absolute():
        parsed = parsed.set(database=str(Path(database).absolute()))
    return parsed.render_as_string(hide_password=True)


def connect(
    url: str, *, create: bool, clock: Clock, busy_timeout_s: float | None = None
) -> Database:
    """The database at `url`, checked as far as can be without opening it.

    `create=False` (the reporting commands) raises LedgerMissingError for a SQLite
    file that does not exist rather than creating an empty one. The busy timeout
    (how long a write waits for another process's lock) is `busy_timeout_s`, else
    the URL's `?timeout=` seconds, else DEFAULT_BUSY_TIMEOUT_S.
    """
    parsed = _parse(url)
    timeout = _busy_timeout(parsed, busy_timeout_s)
    path = _sqlite_path(parsed)
    if path is not None:
        _check_sqlite_file(path, create=create)
    target = Target(
        where=str(path) if path else display_url(url), path=path, busy_timeout_s=timeout
    )
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = create_engine(
                parsed, connect_args={"timeout": timeout, "check_same_thread": False}
            )
            configure_sqlite(engine, busy_timeout_s=timeout)
        else:
            # A bounded connect: a server that vanished without a reset (a cut
            # network) fails the attempt, which the run's ledger hold then retries.
            connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": 10}
            engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except NoSuchModuleError:
        raise ConfigError(
            f"ledger {target.where}: no driver for {parsed.drivername!r}; for PostgreSQL "
            "install 'batcher[postgres]' and use a postgresql+psycopg:// URL"
        ) from None
    except ImportError as exc:
        raise ConfigError(
            f"ledger {target.where}: the database driver cannot be imported: {exc}"
        ) from None
    return Database(engine, target, clock)


def connect_memory(clock: Clock) -> Database:
    """A private, empty, in-memory SQLite ledger (reports over a ledger that does not
    exist yet). One connection shared by every thread, so every call sees its tables."""
    engine = create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    configure_sqlite(engine, busy_timeout_s=DEFAULT_BUSY_TIMEOUT_S)
    return Database(engine, Target("(in memory)", None, DEFAULT_BUSY_TIMEOUT_S), clock)


def configure_sqlite(engine: Engine, *, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (see below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit survives power loss, not only a killed process. Group
        # commits make the extra fsync cheap.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        if connection.get_execution_options().get(READ_OPTION):
            # A reader: a snapshot through the WAL, never waiting on the writer.
            connection.exec_driver_sql("BEGIN")
        else:
            # A writer takes the lock up front: a read-then-write transaction (a
            # budget check, a claim) can then never be overtaken by another process.
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def bring_to_head(db: Database) -> None:
    """Apply pending migrations; refuse a revision this batcher does not know."""
    current = db.read(migrate.current_revision)
    head = migrate.head_revision()
    if current == head:
        return
    where = db.target.where
    if current is not None and not migrate.is_known(current):
        raise LedgerVersionError(
            f"ledger {where} is at schema revision {current!r}, which this batcher does not "
            "know: a newer batcher wrote it; upgrade batcher to use it (nothing was changed)",
            where=where,
        )

    from alembic.util.exc import CommandError

    try:
        db.write(migrate.upgrade_connection)
    except CommandError as exc:
        raise LedgerVersionError(
            f"cannot migrate ledger {where}: {str(exc).strip().splitlines()[0]}", where=where
        ) from None


# --------------------------------------------------------------------------- checks


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"ledger URL {url!r} is not a database URL; {URL_HINT}") from None
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise ConfigError(
            f"ledger URL {display_url(url)}: unknown database {backend!r}; {URL_HINT}"
        )
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigError(
            f"ledger URL {url} names no file: an in-memory ledger would forget "
            "everything at exit; use sqlite:///PATH"
        )
    return parsed


def _busy_timeout(parsed: URL, given: float | None) -> float:
    if given is not None:
        return given
    text = parsed.query.get("timeout")
    if text is None:
        return DEFAULT_BUSY_TIMEOUT_S
    try:
        value = float(text if isinstance(text, str) else text[-1])
    except ValueError:
        value = -1.0
    if value < 0:
        raise ConfigError(f"ledger URL {parsed}: timeout must be a number of seconds")
    return value


def _sqlite_path(parsed: URL) -> Path | None:
    """The SQLite file (absolute, for messages that name it), or None for a server (or
    a SQLite `file:` URI, left to SQLite)."""
    if parsed.get_backend_name() != "sqlite" or "uri" in parsed.query or not parsed.database:
        return None
    return Path(parsed.database).absolute()


def _check_sqlite_file(path: Path, *, create: bool) -> None:
    if not path.parent.is_dir():
        message = f"ledger {path}: the folder {path.parent} does not exist"
        if create:
            raise ConfigError(message)
        raise LedgerMissingError(message)
    if path.is_dir():
        raise ConfigError(f"ledger {path} is a folder, not a file")
    if not create and not path.exists():
        raise LedgerMissingError(
            f"no ledger at {path} (nothing has run with this --db / BATCHER_DATABASE_URL yet)"
        )
