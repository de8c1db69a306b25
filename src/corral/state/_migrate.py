"""Schema migrations (Alembic): `upgrade(url)` brings a database to the newest revision.

The migration scripts live in `corral/state/migrations/`, found through the installed package
(``corral.state:migrations``), so `upgrade` works from a wheel as well as from a checkout. Tables
are created only by migrations, never by `metadata.create_all`, so the migrations are what the
tests exercise.
"""

from __future__ import annotations

import asyncio
import logging

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from corral._retry import Backoff
from corral.state._engine import (
    WRITE,
    PoolOptions,
    is_transient,
    make_engine,
    parse_url,
    redact,
    translate,
)
from corral.state._tables import VERSION_TABLE

__all__ = ["alembic_config", "current_revision", "head_revision", "upgrade"]

logger = logging.getLogger(__name__)

SCRIPT_LOCATION = "corral.state:migrations"

# Taken for the migration's transaction on PostgreSQL: servers starting together upgrade one
# at a time, and the later ones find the schema already at head.
_ADVISORY_LOCK = 0x636F7272616C  # "corral"

_LOCKED_BACKOFF = Backoff(attempts=8, base_s=0.05, max_s=1.0)


def alembic_config() -> Config:
    """Return an Alembic configuration pointing at corral's migration scripts."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def head_revision() -> str:
    """Return the newest migration's revision id."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "corral ships at least one migration"
    return head


def current_revision(connection: sa.Connection) -> str | None:
    """Return the revision a database is at (None: never migrated)."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


async def _upgrade_once(
    engine: AsyncEngine, backend: str, revision: str
) -> tuple[str | None, str | None]:
    async with engine.execution_options(**{WRITE: True}).begin() as conn:
        if backend == "postgresql":
            await conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK}
            )
        before = await conn.run_sync(current_revision)
        await conn.run_sync(_upgrade, revision)
        after = await conn.run_sync(current_revision)
    return before, after


def _upgrade(connection: sa.Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade(url: str | sa.URL, *, revision: str = "head") -> None:
    """Migrate the database at `url` to `revision` (the newest by default). Idempotent.

    Runs in one transaction: a failed upgrade leaves the database as it was. Safe to call from
    several processes at once (PostgreSQL: an advisory lock; SQLite: the write lock).

    Raises:
        UsageError: the URL is not one corral supports.
        StateError: the database could not be reached or refused the migration.
    """
    parsed, backend = parse_url(url)
    engine = make_engine(parsed, backend, PoolOptions(pool_size=1, max_overflow=0))
    attempt = 1
    try:
        while True:
            try:
                before, after = await _upgrade_once(engine, backend, revision)
                break
            except sa_exc.DBAPIError as exc:
                # SQLite: a new file's switch to WAL, made by several servers starting at once,
                # can fail "locked" without waiting for the busy timeout. The upgrade is one
                # transaction that rolled back: run it again.
                delay = _LOCKED_BACKOFF.next_delay_s(attempt) if is_transient(exc) else None
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1
    except (sa_exc.SQLAlchemyError, OSError, TimeoutError) as exc:
        raise translate(exc, f"upgrading the database at {redact(parsed)}") from exc
    finally:
        await engine.dispose()
    if before != after:
        logger.info("database %s upgraded from %s to %s", redact(parsed), before, after)
