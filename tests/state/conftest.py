"""Stores for the conformance suite: in memory, SQLite in a temporary file, and PostgreSQL.

PostgreSQL is the machine's server at 127.0.0.1:5432 (database `test`, user `postgres` or
`root`; CORRAL_TEST_POSTGRES overrides). The run creates its own databases there and drops them
at the end. If the server is down the PostgreSQL tests skip, naming it, unless CI=true: then
they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from corral.state import MemoryStore, SqlStore, Store, Tenant, upgrade

T = TypeVar("T")

_PG_ADMIN_URLS = (
    [os.environ["CORRAL_TEST_POSTGRES"]]
    if os.environ.get("CORRAL_TEST_POSTGRES")
    else [
        "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
        "postgresql+asyncpg://root@127.0.0.1:5432/test",
    ]
)
_PG = sa.make_url(_PG_ADMIN_URLS[0])
PG_WHERE = f"PostgreSQL at {_PG.host}:{_PG.port or 5432}"


def run_in_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a fresh loop in another thread.

    Session fixtures are set up from inside a test's running loop, where `asyncio.run` is
    refused; a thread of its own has no loop.
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, make()).result()


async def _admin(url: str, *statements: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


class PostgresServer:
    """Makes throwaway databases on the machine's PostgreSQL, and drops them."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def create(self) -> str:
        """Create an empty database; return its URL."""
        name = f"corral_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        run_in_thread(partial(_admin, self.admin_url, f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return sa.make_url(self.admin_url).set(database=name).render_as_string(False)

    def drop(self, url: str) -> None:
        """Drop a database made by `create`, closing any connection left to it."""
        name = sa.make_url(url).database
        assert name in self.created
        run_in_thread(
            partial(_admin, self.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )
        self.created.remove(name)


@pytest.fixture(scope="session")
def postgres(service_unavailable: Callable[[str, object], NoReturn]) -> Iterator[PostgresServer]:
    """The machine's PostgreSQL server; skips (fails with CI=true) if it is not reachable."""
    errors: list[str] = []
    for url in _PG_ADMIN_URLS:
        try:
            run_in_thread(partial(_admin, url, "SELECT 1"))
        except Exception as exc:
            errors.append(f"{sa.make_url(url).username}: {type(exc).__name__}: {exc}")
            continue
        server = PostgresServer(url)
        try:
            yield server
        finally:
            for name in list(server.created):
                server.drop(sa.make_url(url).set(database=name).render_as_string(False))
        return
    service_unavailable(PG_WHERE, "; ".join(errors))


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresServer) -> str:
    """A database for this test run, migrated to head; tests keep apart by tenant."""
    url = postgres.create()
    run_in_thread(partial(upgrade, url))
    return url


@pytest.fixture
def fresh_postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """An empty database of this test's own, dropped after it."""
    url = postgres.create()
    try:
        yield url
    finally:
        postgres.drop(url)


def sqlite_url(path: os.PathLike[str] | str) -> str:
    """Return the store URL of a SQLite file."""
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which store a conformance test runs on."""
    return str(request.param)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once per run, for tests to copy (cheaper than migrating)."""
    path = tmp_path_factory.mktemp("template") / "corral.db"
    run_in_thread(partial(upgrade, sqlite_url(path)))
    return path


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """The database URL of the store under test (None: the in-memory store)."""
    if backend == "memory":
        return None
    if backend == "sqlite":
        # Closed after the upgrade, the template has no WAL left: the file is the database.
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), tmp_path / "corral.db")
        return sqlite_url(tmp_path / "corral.db")
    return str(request.getfixturevalue("postgres_url"))


async def open_store(url: str | None) -> Store:
    """Open the store at `url` (None: in memory)."""
    if url is None:
        return MemoryStore()
    return await SqlStore.connect(url)


@pytest.fixture
async def store(store_url: str | None) -> AsyncIterator[Store]:
    """A store that must be idle (no call in flight, no connection lent) after the test."""
    opened = await open_store(store_url)
    try:
        yield opened
        stats = opened.statistics()
        assert stats.idle, f"store not idle after the test: {stats}"
    finally:
        await opened.aclose()


@pytest.fixture
async def tenant(store: Store) -> Tenant:
    """A tenant of this test's own (the PostgreSQL database is shared by the run)."""
    return await store.create_tenant("acme")


@pytest.fixture
async def other(store: Store) -> Tenant:
    """A second tenant, to check isolation."""
    return await store.create_tenant("globex")
