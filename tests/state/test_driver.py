"""`DriverConnection`: the store's Core statements on the sqlite3 driver store and read exactly
what SQLAlchemy's own execution does. (On PostgreSQL the store's tests run its writes on the
asyncpg adapter: tests/state/test_sql.py, test_store_conformance.py.)"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from corral.state import upgrade
from corral.state._driver import DriverConnection
from corral.state._tables import requests, sessions


@pytest.fixture
async def engine(tmp_path: Path) -> sa.Engine:
    """The store's schema, from its migrations; foreign keys off (no tenants needed)."""
    await upgrade(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    return sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")


def _driver(conn: sa.Connection) -> DriverConnection:
    return DriverConnection(conn.connection.dbapi_connection, conn.dialect)


def test_rows_are_stored_and_read_back_as_sqlalchemy_does(engine: sa.Engine) -> None:
    when = datetime(2026, 11, 28, 12, 0, 1, 123456, tzinfo=UTC)
    insert = sqlite_insert(sessions).on_conflict_do_nothing().returning(sessions.c.id)
    row = {"tenant_id": "t", "meta": '{"a": 1}', "last_seq": 0, "created_at": when}
    with engine.begin() as conn:
        assert conn.execute(insert, {**row, "id": "by-sqlalchemy"}).scalar() == "by-sqlalchemy"
        assert _driver(conn).execute(insert, {**row, "id": "by-driver"}).scalar() == "by-driver"
        # A conflict: DO NOTHING returns no row, on both paths.
        assert _driver(conn).execute(insert, {**row, "id": "by-driver"}).first() is None
    raw = sqlite3.connect(engine.url.database or "")
    stored = raw.execute(
        "SELECT id, tenant_id, meta, last_seq, created_at FROM sessions"
    ).fetchall()
    raw.close()
    assert len(stored) == 2
    assert stored[0][1:] == stored[1][1:]  # byte for byte, the timestamp's text included
    select = sa.select(sessions).where(sessions.c.tenant_id == "t").order_by(sessions.c.id)
    with engine.connect() as conn:
        ours = list(_driver(conn).execute(select))
        theirs = list(conn.execute(select))
    assert [tuple(r) for r in ours] == [tuple(r) for r in theirs]
    assert ours[0].created_at == theirs[0].created_at
    assert isinstance(ours[0].created_at, datetime)


def test_many_rows_a_returning_update_and_literal_values(engine: sa.Engine) -> None:
    now = datetime(2026, 11, 28, tzinfo=UTC)
    rows = [
        {
            "tenant_id": "t",
            "id": f"r{i}",
            "session_id": "s",
            "status": "running",
            "idempotency_key": None,
            "created_at": now,
        }
        for i in range(3)
    ]
    with engine.begin() as conn:
        driver = _driver(conn)
        driver.execute(sa.insert(requests), rows)
        update = (
            sa.update(requests)
            .where(
                requests.c.id == sa.bindparam("b_id"), requests.c.status == sa.literal("running")
            )
            .values(status=sa.bindparam("b_status"), finished_at=sa.bindparam("b_finished"))
            .returning(requests)
        )
        done = driver.execute(update, {"b_id": "r1", "b_status": "done", "b_finished": now}).first()
        assert (done.id, done.status, done.finished_at) == ("r1", "done", now.replace(tzinfo=None))
        # The literal ("running") is bound from the statement: r1 is not running any more.
        again = {"b_id": "r1", "b_status": "failed", "b_finished": now}
        assert driver.execute(update, again).first() is None
        count = driver.execute(sa.select(sa.func.count()).select_from(requests)).scalar()
        assert count == 3


def test_driver_errors_are_sqlalchemys_and_expanding_lists_are_refused(engine: sa.Engine) -> None:
    row = {
        "tenant_id": "t",
        "id": "s1",
        "meta": "{}",
        "last_seq": 0,
        "created_at": datetime.now(UTC),
    }
    with engine.begin() as conn:
        driver = _driver(conn)
        driver.execute(sa.insert(sessions), row)
        with pytest.raises(sa_exc.IntegrityError) as caught:
            driver.execute(sa.insert(sessions), row)
        assert isinstance(caught.value.orig, sqlite3.IntegrityError)
        expanding = sa.select(sessions).where(sessions.c.id.in_(["s1", "s2"]))
        with pytest.raises(sa_exc.ArgumentError, match="expanding"):
            driver.execute(expanding)


def test_a_statement_has_a_plan_per_dialect() -> None:
    # One process may run the same statement on SQLite and on PostgreSQL (the test suite does):
    # each gets its own SQL and parameters.
    from sqlalchemy.dialects import postgresql, sqlite

    from corral.state._driver import _plan

    stmt = sa.update(sessions).where(sessions.c.id == sa.bindparam("b_id")).values(last_seq=1)
    lite = _plan(stmt, ("b_id",), sqlite.dialect())
    pg = _plan(stmt, ("b_id",), postgresql.asyncpg.dialect())  # type: ignore[no-untyped-call]
    assert "?" in lite.sql
    assert "$1" in pg.sql
    assert _plan(stmt, ("b_id",), sqlite.dialect()) is lite
