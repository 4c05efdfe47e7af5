"""Apply the Alembic migrations from the installed package or the checkout.

Alembic is imported only to migrate: a ledger already at HEAD (every command
after the first) is checked with one query, which keeps a third of a second
of imports off every command's start.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sqlalchemy import Connection, Engine, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config

# The newest migration in migrations/versions (a test holds the two together).
HEAD: Final = "0006"
VERSION_TABLE: Final = "alembic_version"


def migrations_dir() -> Path:
    """The Alembic scripts: shipped as batcher/_migrations in a wheel, migrations/ in a checkout."""
    package = Path(__file__).resolve().parent.parent  # batcher/
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("batcher's migrations are missing from this installation")


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    return HEAD


def scripts_head() -> str | None:
    """The head as Alembic reads it from the scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The ledger's schema revision (None: no schema yet), as Alembic records it."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    with _migrating(engine) as connection:
        command.upgrade(alembic_config(connection), revision)


def upgrade_connection(connection: Connection) -> None:
    """Migrate to the head inside the caller's transaction."""
    from alembic import command

    command.upgrade(alembic_config(connection), "head")


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    with _migrating(engine) as connection:
        command.downgrade(alembic_config(connection), revision)


@contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """One transaction for the migration; on SQLite with foreign keys off.

    SQLite changes most of a table by rebuilding it (batch mode: copy, DROP,
    rename), and with foreign keys on, that DROP deletes every row pointing
    at the table through ON DELETE CASCADE: rebuilding `items` would erase the
    credit rows. The pragma cannot change inside a transaction, so it is set
    on the connection before the migration's transaction begins, the keys are
    checked before the commit, and it is set back after.
    """
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            connection.connection.dbapi_connection.execute(  # type: ignore[union-attr]
                "PRAGMA foreign_keys=OFF"
            )
        try:
            with connection.begin():
                yield connection
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").first()
                    if broken is not None:
                        raise RuntimeError(f"a migration broke a foreign key: {tuple(broken)}")
        finally:
            if sqlite:
                connection.connection.dbapi_connection.execute(  # type: ignore[union-attr]
                    "PRAGMA foreign_keys=ON"
                )


def is_known(revision: str) -> bool:
    """Whether this installation has the migration script of `revision`."""
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False
