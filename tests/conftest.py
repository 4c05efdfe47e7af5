"""Fixtures shared by every test tier.

The sandbox (a local emulator of the Magic Hour API, batcher.sandbox):

- `sandbox`: one server for the whole session, renders take about 0.05 s.
  Tests that change its faults must restore them: request `sandbox_reset`
  instead, which gives the same handle and puts every runtime setting back
  before and after the test (or call `sandbox.reset_faults()` yourself).
  Its journal and balance are shared: assert on your own project ids, not
  on totals.
- `make_sandbox(**config)`: a dedicated server per call (SandboxConfig
  fields; renders default to 0.05 s here too), stopped when the test ends.
  Use it for anything that needs a clean journal, a balance, a tier, a seed
  or faults from the first request.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from batcher.sandbox import SandboxConfig, SandboxHandle, running_sandbox

# Renders fast enough that a test awaiting completion takes a blink.
FAST_SANDBOX: dict[str, Any] = {"render_seconds": 0.05}

MakeSandbox = Callable[..., SandboxHandle]


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox(SandboxConfig(**FAST_SANDBOX)) as handle:
        yield handle


@pytest.fixture
def sandbox_reset(sandbox: SandboxHandle) -> Iterator[SandboxHandle]:
    """The shared sandbox, with its runtime settings restored around the test."""
    sandbox.reset_faults()
    yield sandbox
    sandbox.reset_faults()


@pytest.fixture
def make_sandbox() -> Iterator[MakeSandbox]:
    with ExitStack() as stack:

        def make(**config: Any) -> SandboxHandle:
            settings = {**FAST_SANDBOX, **config}
            return stack.enter_context(running_sandbox(SandboxConfig(**settings)))

        yield make


# --------------------------------------------------------------------------- PostgreSQL
#
# The real server on this machine (127.0.0.1:5432, trust auth). A session-wide
# template database is migrated once; each test gets its own database cloned
# from it, so tests never see each other's rows and pay no migration cost.
# Without a server these tests skip, unless BATCHER_REQUIRE_POSTGRES=1 (CI)
# makes that a failure.

POSTGRES_ADMIN_DSN = "host=127.0.0.1 port=5432 dbname=postgres user=postgres"
# One per test session: several sessions (checkouts, CI) may share the server.
POSTGRES_TEMPLATE = f"batcher_test_template_{os.getpid()}"


def _postgres_admin() -> Any:
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("BATCHER_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"no PostgreSQL server at 127.0.0.1:5432: {exc}")


def postgres_url(database: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    from batcher.ledger import Ledger

    admin = _postgres_admin()
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{POSTGRES_TEMPLATE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{POSTGRES_TEMPLATE}"')
        Ledger.open(postgres_url(POSTGRES_TEMPLATE)).close()
        yield POSTGRES_TEMPLATE
        admin.execute(f'DROP DATABASE IF EXISTS "{POSTGRES_TEMPLATE}" WITH (FORCE)')


@pytest.fixture
def postgres_database(postgres_template: str) -> Iterator[str]:
    """The URL of a fresh, migrated PostgreSQL database, dropped after the test."""
    name = f"batcher_test_{uuid.uuid4().hex[:12]}"
    admin = _postgres_admin()
    with admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
        try:
            yield postgres_url(name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A fresh ledger on each engine: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("postgres_database")
    return url


@pytest.fixture
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A database with nothing in it (not even migrations), on the engine in `param`."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"batcher_empty_{uuid.uuid4().hex[:12]}"
    admin = _postgres_admin()
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield postgres_url(name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
