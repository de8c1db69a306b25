"""Migrations: the only way tables are made, so these tests are what proves them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner

import corral.state
from corral.cli import app
from corral.state import SqlStore, upgrade
from corral.state._migrate import alembic_config, head_revision
from corral.state._tables import VERSION_TABLE, metadata
from tests.state.conftest import sqlite_url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "fresh.db")
    else:
        yield str(request.getfixturevalue("fresh_postgres_url"))


async def _inspect(url: str) -> tuple[str | None, set[str], list[object]]:
    engine = create_async_engine(url, poolclass=sa.NullPool)

    def look(conn: sa.Connection) -> tuple[str | None, set[str], list[object]]:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
        )
        tables = set(sa.inspect(conn).get_table_names())
        return context.get_current_revision(), tables, compare_metadata(context, metadata)

    try:
        async with engine.connect() as conn:
            return await conn.run_sync(look)
    finally:
        await engine.dispose()


async def test_upgrade_creates_every_table_and_is_idempotent(empty_url: str) -> None:
    await upgrade(empty_url)
    await upgrade(empty_url)
    revision, tables, _ = await _inspect(empty_url)
    assert revision == head_revision()
    assert tables == set(metadata.tables) | {VERSION_TABLE}


async def test_the_head_migration_matches_the_tables_the_code_uses(empty_url: str) -> None:
    await upgrade(empty_url)
    _, _, differences = await _inspect(empty_url)
    assert differences == []


async def test_servers_starting_together_upgrade_once(empty_url: str) -> None:
    await asyncio.gather(*(upgrade(empty_url) for _ in range(3)))
    store = await SqlStore.connect(empty_url)
    await store.aclose()


def test_the_migrations_ship_inside_the_package() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    package = Path(corral.state.__file__).parent
    assert Path(scripts.dir).resolve() == (package / "migrations").resolve()
    assert [r.revision for r in scripts.walk_revisions()] == [head_revision()]
    assert (package / "migrations" / "script.py.mako").is_file()


def test_corral_db_upgrade(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "cli.db")
    runner = CliRunner()
    first = runner.invoke(app, ["db", "upgrade", "--url", url])
    assert first.exit_code == 0, first.output
    assert f"at revision {head_revision()}" in first.output
    again = runner.invoke(app, ["db", "upgrade"], env={"CORRAL_DATABASE_URL": url})
    assert again.exit_code == 0, again.output
    bad = runner.invoke(app, ["db", "upgrade", "--url", "mysql://x@127.0.0.1/db"])
    assert bad.exit_code == 1
    assert "not 'mysql'" in bad.output
