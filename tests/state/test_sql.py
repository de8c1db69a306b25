"""What only the SQL store has: several pools on one database, locks, pools, error mapping."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from corral import Message, UsageError
from corral.errors import StateError
from corral.state import SqlStore
from corral.state._sqlite import SqliteRunner
from tests.state.conftest import sqlite_url


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "corral.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def stores(sql_url: str) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    """Two stores on one database, as two server processes would have."""
    first = await SqlStore.connect(sql_url, upgrade=True)
    second = await SqlStore.connect(sql_url)
    try:
        yield first, second
        for store in (first, second):
            assert store.statistics().idle, store.statistics()
    finally:
        await first.aclose()
        await second.aclose()


async def test_two_stores_on_one_database_share_gap_free_numbers(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    one, two = stores
    tenant = await one.create_tenant("acme")
    session = await one.create_session(tenant.id)
    results = await asyncio.gather(
        *(
            (one if n % 2 else two).append_messages(
                tenant.id, session.id, f"r{n}", [Message.user(f"{n}a"), Message.user(f"{n}b")]
            )
            for n in range(40)
        ),
        *(one.memory_increment(tenant.id, "workspace:w", "n", writer="one") for _ in range(20)),
        *(two.memory_increment(tenant.id, "workspace:w", "n", writer="two") for _ in range(20)),
    )
    appended: list[Any] = list(results[:40])
    seqs = sorted(s for r in appended for s in r)
    assert seqs == list(range(1, 81))
    stored = await two.list_messages(tenant.id, session.id)
    assert sorted(m.message.content for m in stored) == sorted(
        f"{n}{x}" for n in range(40) for x in "ab"
    )
    count = await one.memory_get(tenant.id, "workspace:w", "n")
    assert count is not None
    assert (count.value, count.version) == (40, 40)


async def test_api_keys_are_stored_only_as_hashes(sql_url: str, tmp_path: Path) -> None:
    def sqlite_files() -> list[bytes]:
        return [p.read_bytes() for p in tmp_path.glob("corral.db*")]

    store = await SqlStore.connect(sql_url, upgrade=True)
    try:
        tenant = await store.create_tenant("acme")
        key, record = await store.create_api_key(tenant.id, name="ci")
        # While open, the key's row may sit in the WAL file; after close, in the database.
        files = await asyncio.to_thread(sqlite_files)
    finally:
        await store.aclose()
    files += await asyncio.to_thread(sqlite_files)
    secret = key.split("_", 2)[2]  # crl_<id>_<secret>: the secret itself may contain "_"
    assert not any(secret.encode() in data for data in files)
    engine = create_async_engine(sql_url, poolclass=sa.NullPool)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT * FROM api_keys"))).all()
    finally:
        await engine.dispose()
    mine = [row for row in rows if row.id == record.id]
    assert len(mine) == 1
    assert mine[0].key_hash == hashlib.sha256(key.encode()).hexdigest()
    for row in rows:
        assert not any(secret in str(value) for value in row)


# -- locks: per row, never per database ---------------------------------------------------------


async def lock_session_row(conn: Any, tenant_id: str, session_id: str) -> None:
    await conn.execute(
        sa.text("SELECT 1 FROM sessions WHERE tenant_id = :t AND id = :s FOR UPDATE"),
        {"t": tenant_id, "s": session_id},
    )


async def test_postgres_appends_wait_only_for_their_own_session(postgres_url: str) -> None:
    store = await SqlStore.connect(postgres_url)
    outsider = create_async_engine(postgres_url, poolclass=sa.NullPool)
    try:
        tenant = await store.create_tenant("acme")
        busy = await store.create_session(tenant.id)
        free = await store.create_session(tenant.id)
        async with outsider.connect() as conn:
            await conn.begin()
            await lock_session_row(conn, tenant.id, busy.id)
            blocked = asyncio.create_task(
                store.append_messages(tenant.id, busy.id, None, [Message.user("waits")])
            )
            # Another session's appends go ahead while that row is locked...
            for _ in range(3):
                await store.append_messages(tenant.id, free.id, None, [Message.user("goes")])
            assert not blocked.done()  # ... and this one cannot finish before the lock goes.
            assert store.statistics().in_flight == 1
            await conn.rollback()
        assert await blocked == [1]
        assert store.statistics().idle
    finally:
        await outsider.dispose()
        await store.aclose()


async def test_postgres_cancelling_a_call_waiting_on_a_lock_rolls_it_back(
    postgres_url: str,
) -> None:
    store = await SqlStore.connect(postgres_url, pool_size=1, max_overflow=0)
    outsider = create_async_engine(postgres_url, poolclass=sa.NullPool)
    try:
        tenant = await store.create_tenant("acme")
        session = await store.create_session(tenant.id)
        async with outsider.connect() as conn:
            await conn.begin()
            await lock_session_row(conn, tenant.id, session.id)
            waiting = asyncio.create_task(
                store.append_messages(tenant.id, session.id, None, [Message.user("cancelled")])
            )
            await until_waiting_for_a_lock(conn)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await conn.rollback()
        # The pool's one connection came back usable, and the cancelled append left no number.
        assert store.statistics().idle
        assert await store.append_messages(tenant.id, session.id, None, [Message.user("ok")]) == [1]
        assert [m.message.content for m in await store.list_messages(tenant.id, session.id)] == [
            "ok"
        ]
    finally:
        await outsider.dispose()
        await store.aclose()


async def until_waiting_for_a_lock(conn: Any) -> None:
    """Return once a backend of this database waits for a lock (the server's own view)."""
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    for _ in range(1000):
        if (await conn.execute(query)).scalar():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no call started waiting for the row lock")


async def test_aclose_waits_for_calls_in_flight(postgres_url: str) -> None:
    store = await SqlStore.connect(postgres_url)
    outsider = create_async_engine(postgres_url, poolclass=sa.NullPool)
    try:
        tenant = await store.create_tenant("acme")
        session = await store.create_session(tenant.id)
        async with outsider.connect() as conn:
            await conn.begin()
            await lock_session_row(conn, tenant.id, session.id)
            append = asyncio.create_task(
                store.append_messages(tenant.id, session.id, None, [Message.user("last")])
            )
            await until_waiting_for_a_lock(conn)
            closing = asyncio.create_task(store.aclose())
            await asyncio.sleep(0)
            with pytest.raises(UsageError, match="closing"):
                await store.get_session(tenant.id, session.id)
            assert not closing.done()
            await conn.rollback()
        assert await append == [1]
        await closing
        assert store.statistics().idle
    finally:
        await outsider.dispose()
        await store.aclose()


# -- SQLite's single writer ---------------------------------------------------------------------


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    store = await SqlStore.connect(
        sqlite_url(tmp_path / "corral.db"), upgrade=True, sqlite_busy_timeout_s=0.05
    )
    try:
        yield store
    finally:
        await store.aclose()


async def test_sqlite_reruns_a_write_while_another_process_holds_the_lock(
    sqlite_store: SqlStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rerun = asyncio.Event()

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "rerun" in record.getMessage():
                rerun.set()  # logged on the loop's thread, by the store's retry loop

    logger = logging.getLogger("corral.state._sql")
    spy = Spy(logging.DEBUG)
    logger.addHandler(spy)
    caplog.set_level(logging.DEBUG, logger="corral.state._sql")
    tenant = await sqlite_store.create_tenant("acme")
    other = sqlite3.connect(tmp_path / "corral.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's writer
        write = asyncio.create_task(
            sqlite_store.memory_increment(tenant.id, "workspace:w", "n", writer="me")
        )
        await rerun.wait()
        reader = await sqlite_store.memory_get(tenant.id, "workspace:w", "n")  # WAL: reads go on
        assert reader is None
        other.execute("COMMIT")
        assert (await write).value == 1
    finally:
        other.close()
        logger.removeHandler(spy)


async def test_sqlite_a_writer_connection_closed_under_the_store_is_replaced(
    sqlite_store: SqlStore,
) -> None:
    tenant = await sqlite_store.create_tenant("acme")
    runner = sqlite_store._engine
    assert isinstance(runner, SqliteRunner)
    writer = runner._writer
    assert writer is not None
    writer.connection.dbapi_connection.close()  # type: ignore[union-attr]
    # The next write finds its connection gone, takes a new one and runs again: nothing lost.
    session = await sqlite_store.create_session(tenant.id)
    assert runner._writer is not writer
    assert (await sqlite_store.get_session(tenant.id, session.id)).id == session.id
    assert (await sqlite_store.create_session(tenant.id)).id != session.id


async def test_sqlite_gives_up_on_a_lock_that_is_never_released(
    sqlite_store: SqlStore, tmp_path: Path
) -> None:
    tenant = await sqlite_store.create_tenant("acme")
    other = sqlite3.connect(tmp_path / "corral.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StateError, match="stayed locked by other writers") as caught:
            await sqlite_store.memory_increment(tenant.id, "workspace:w", "n", writer="me")
        assert isinstance(caught.value.__cause__, sa_exc.OperationalError)
    finally:
        other.close()
    assert sqlite_store.statistics().idle


# -- errors map to corral errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql+aiomysql://u@127.0.0.1/db", "not 'mysql'"),
        ("sqlite:///x.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite://", "in-memory"),
        ("sqlite+aiosqlite:///:memory:", "in-memory"),
        ("postgresql://u@127.0.0.1/db", "postgresql+asyncpg"),
        ("not a url", "is not valid"),
    ],
)
async def test_unsupported_urls_are_usage_errors(url: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        await SqlStore.connect(url)


async def test_bad_pool_options_are_usage_errors(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "x.db")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"pool_size": 0}, "pool_size"),
        ({"max_overflow": -1}, "max_overflow"),
        ({"pool_timeout_s": 0}, "pool_timeout_s"),
        ({"sqlite_busy_timeout_s": "5"}, "sqlite_busy_timeout_s"),
    ]
    for options, message in cases:
        with pytest.raises(UsageError, match=message):
            await SqlStore.connect(url, **options)


async def test_an_unreachable_server_is_a_state_error() -> None:
    url = "postgresql+asyncpg://postgres:secret-pw@127.0.0.1:1/test"
    with pytest.raises(StateError, match="could not be reached") as caught:
        await SqlStore.connect(url)
    assert caught.value.__cause__ is not None
    assert "secret-pw" not in str(caught.value)


async def test_an_unmigrated_database_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(StateError, match=r"revision none, not 0001: run `corral db upgrade"):
        await SqlStore.connect(sqlite_url(tmp_path / "empty.db"))


async def test_a_missing_table_is_a_state_error_chained_to_the_cause(tmp_path: Path) -> None:
    store = await SqlStore.connect(sqlite_url(tmp_path / "corral.db"), upgrade=True)
    try:
        raw = sqlite3.connect(tmp_path / "corral.db")
        raw.execute("DROP TABLE memory")
        raw.commit()
        raw.close()
        with pytest.raises(StateError, match="expected schema") as caught:
            await store.memory_get("t", "workspace:w", "k")
        assert isinstance(caught.value.__cause__, sa_exc.OperationalError)
        assert store.statistics().idle
    finally:
        await store.aclose()


async def test_a_pool_with_no_free_connection_times_out_as_a_state_error(sql_url: str) -> None:
    store = await SqlStore.connect(
        sql_url, upgrade=True, pool_size=1, max_overflow=0, pool_timeout_s=0.1
    )
    holding, release = threading.Event(), threading.Event()

    def hold(conn: sa.Connection) -> None:  # SQLite: runs in the readers' only thread
        conn.execute(sa.text("SELECT 1"))
        holding.set()
        release.wait(5)

    try:
        tenant = await store.create_tenant("acme")
        if isinstance(store._engine, SqliteRunner):
            # The readers' only connection (and thread), lent out; a read queues behind it.
            held = asyncio.ensure_future(store._tx("holding", hold, write=False))
            await asyncio.to_thread(holding.wait, 5)
            assert store.statistics().checked_out == 1
            waiting = asyncio.ensure_future(store.get_tenant(tenant.id))
            await asyncio.sleep(0.3)
            release.set()
            await held
            with pytest.raises(StateError, match="no database connection came free") as caught:
                await waiting
        else:
            async with store._engine.connect():  # the pool's only connection, lent out
                assert store.statistics().checked_out == 1
                with pytest.raises(StateError, match="no database connection came free") as caught:
                    await store.get_tenant(tenant.id)
        assert isinstance(caught.value.__cause__, sa_exc.TimeoutError)
        assert (await store.get_tenant(tenant.id)).id == tenant.id
    finally:
        release.set()
        await store.aclose()


async def test_verified_keys_are_trusted_for_the_cache_time(sql_url: str) -> None:
    """A cached key needs no read; revoking here forgets it at once, elsewhere after the TTL."""
    here = await SqlStore.connect(sql_url, upgrade=True, api_key_cache_s=0.3)
    elsewhere = await SqlStore.connect(sql_url)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    for engine in _sync_engines(here):
        sa.event.listen(engine, "before_cursor_execute", count)
    try:
        tenant = await here.create_tenant("acme")
        key, record = await here.create_api_key(tenant.id)
        other, other_record = await here.create_api_key(tenant.id)
        assert await here.tenant_for_key(key) == tenant
        reads = len(statements)
        for _ in range(5):
            assert await here.tenant_for_key(key) == tenant
        assert len(statements) == reads  # served from the cache
        # Unknown and wrong keys are never cached: each is read (and refused) again.
        tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
        for _ in range(2):
            assert await here.tenant_for_key(tampered) is None
        assert len(statements) > reads

        # Revoked through this store: refused at once.
        await here.revoke_api_key(tenant.id, record.id)
        assert await here.tenant_for_key(key) is None
        # Revoked by another process: trusted until the TTL runs out, then refused.
        assert await here.tenant_for_key(other) == tenant
        await elsewhere.revoke_api_key(tenant.id, other_record.id)
        assert await here.tenant_for_key(other) == tenant
        await asyncio.sleep(0.35)
        assert await here.tenant_for_key(other) is None
    finally:
        await here.aclose()
        await elsewhere.aclose()


async def test_a_lookup_racing_a_revocation_is_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corral.state import _sql_records

    read, release = threading.Event(), threading.Event()
    original = _sql_records.tenant_for_key

    def slow_lookup(*args: Any) -> Any:  # runs in the store's worker thread
        found = original(*args)
        read.set()
        release.wait(5)
        return found

    store = await SqlStore.connect(sqlite_url(tmp_path / "c.db"), upgrade=True, api_key_cache_s=60)
    try:
        tenant = await store.create_tenant("acme")
        key, record = await store.create_api_key(tenant.id)
        monkeypatch.setattr(_sql_records, "tenant_for_key", slow_lookup)
        # The lookup reads the key as valid; the revocation lands before the lookup returns.
        lookup = asyncio.ensure_future(store.tenant_for_key(key))
        await asyncio.to_thread(read.wait, 5)
        await store.revoke_api_key(tenant.id, record.id)
        release.set()
        assert await lookup == tenant  # it read the key before the revocation...
        monkeypatch.setattr(_sql_records, "tenant_for_key", original)
        assert await store.tenant_for_key(key) is None  # ...but did not cache it
    finally:
        await store.aclose()


async def test_bad_key_cache_time(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "c.db")
    for bad in (-1, "5", True):
        with pytest.raises(UsageError, match="api_key_cache_s"):
            await SqlStore.connect(url, upgrade=True, api_key_cache_s=bad)  # type: ignore[arg-type]


def _sync_engines(store: SqlStore) -> list[sa.Engine]:
    """The SQLAlchemy engines a store's statements run on (to listen to what they execute)."""
    from corral.state._sqlite import SqliteRunner

    engine = store._engine
    if isinstance(engine, SqliteRunner):
        return [engine._writer_engine, engine._reader_engine]
    return [engine.sync_engine]


async def test_sqlite_a_write_waiting_for_the_lock_does_not_block_the_loop(tmp_path: Path) -> None:
    sqlite_store = await SqlStore.connect(
        sqlite_url(tmp_path / "corral.db"), upgrade=True, sqlite_busy_timeout_s=5
    )
    tenant = await sqlite_store.create_tenant("acme")
    other = sqlite3.connect(tmp_path / "corral.db", isolation_level=None)
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(heartbeat())
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock for 0.5 s
        write = asyncio.create_task(
            sqlite_store.memory_increment(tenant.id, "workspace:w", "n", writer="me")
        )
        await asyncio.sleep(0.5)
        assert not write.done()
        assert ticks >= 20  # the loop ran on while the write waited (asleep, not in SQLite)
        other.execute("COMMIT")
        assert (await write).value == 1
    finally:
        beat.cancel()
        other.close()
        await sqlite_store.aclose()


async def test_sqlite_the_wal_is_checkpointed_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corral.state import _sqlite

    monkeypatch.setattr(_sqlite, "CHECKPOINT_EVERY_S", 0.05)
    monkeypatch.setattr(_sqlite, "CHECKPOINT_WAL_BYTES", 1)  # any WAL at all
    path = tmp_path / "c.db"
    store = await SqlStore.connect(sqlite_url(path), upgrade=True)

    def in_database_file() -> list[str]:
        # immutable=1 reads the database file alone, not the WAL: only checkpointed rows.
        conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return [row[0] for row in conn.execute("SELECT name FROM tenants")]
        finally:
            conn.close()

    try:
        await store.create_tenant("acme")
        async with asyncio.timeout(5):
            # Polls the file: SQLite tells no one when a checkpoint lands.
            while "acme" not in await asyncio.to_thread(in_database_file):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await store.aclose()


async def test_postgres_one_statement_writes_run_without_a_transaction(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating a session or recording a request is one round trip, not BEGIN, it, COMMIT."""
    from sqlalchemy.dialects.postgresql import asyncpg as sa_asyncpg

    begins: list[str] = []
    adapter = sa_asyncpg.AsyncAdapt_asyncpg_connection
    start = adapter._start_transaction

    async def counted(self: Any) -> None:
        if self.isolation_level != "autocommit":  # a BEGIN is sent to the server
            begins.append("begin")
        await start(self)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(adapter, "_start_transaction", counted)
    store = await SqlStore.connect(postgres_url)
    try:
        tenant = await store.create_tenant("acme")
        begins.clear()
        session = await store.create_session(tenant.id)
        first, created = await store.record_request(tenant.id, session.id, idempotency_key="k")
        assert created
        assert begins == []
        # The autocommit path keeps the rules: a second request with the key yields to the first.
        again, created = await store.record_request(tenant.id, session.id, idempotency_key="k")
        assert (again.id, created) == (first.id, False)
        # Writes of several statements still run in one transaction.
        await store.finish_request(tenant.id, first.id, status="done", messages=[Message.user("x")])
        assert begins == ["begin"]
        assert store.statistics().idle
    finally:
        await store.aclose()


async def test_postgres_writes_run_on_the_driver_and_reads_through_sqlalchemy(
    postgres_url: str,
) -> None:
    """A write's statements skip SQLAlchemy's execution (see _driver.py); a read keeps it."""
    store = await SqlStore.connect(postgres_url)
    executed: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        executed.append(statement.split()[0])

    engine = store._engine
    assert isinstance(engine, AsyncEngine)
    sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        tenant = await store.create_tenant("acme")
        session = await store.create_session(tenant.id)
        request, _ = await store.record_request(tenant.id, session.id)
        await store.finish_request(
            tenant.id, request.id, status="done", messages=[Message.user("x"), Message.user("y")]
        )
        assert executed == []
        messages = await store.list_messages(tenant.id, session.id)
        assert [m.seq for m in messages] == [1, 2]
        assert executed  # the read went through SQLAlchemy
        assert (await store.get_request(tenant.id, request.id)).status == "done"
        assert store.statistics().idle
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", count)
        await store.aclose()


async def test_postgres_a_connection_lost_under_a_write_is_not_lent_again(
    fresh_postgres_url: str,
) -> None:
    """Writes run on the driver: a lost connection is still invalidated, as SQLAlchemy would."""
    store = await SqlStore.connect(fresh_postgres_url, upgrade=True, pool_size=1, max_overflow=0)
    admin = create_async_engine(fresh_postgres_url, poolclass=sa.NullPool)
    try:
        tenant = await store.create_tenant("acme")
        session = await store.create_session(tenant.id)
        async with admin.connect() as conn:  # the server drops the pool's one connection
            await conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = 'corral'"
                )
            )
        with pytest.raises(StateError):  # in use moments ago: lent unpinged, and it fails
            await store.append_messages(tenant.id, session.id, None, [Message.user("lost")])
        # The next write gets a new connection, and nothing of the failed one was kept.
        assert await store.append_messages(tenant.id, session.id, None, [Message.user("ok")]) == [1]
        assert store.statistics().idle
    finally:
        await admin.dispose()
        await store.aclose()


async def test_postgres_a_connection_the_server_dropped_is_replaced(
    fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection idle past the ping threshold is checked, and replaced if gone."""
    from corral.state import _engine

    monkeypatch.setattr(_engine, "PING_AFTER_IDLE_S", 0.2)
    store = await SqlStore.connect(fresh_postgres_url, upgrade=True, pool_size=2)
    admin = create_async_engine(fresh_postgres_url, poolclass=sa.NullPool)
    try:
        tenant = await store.create_tenant("acme")
        async with admin.connect() as conn:  # the server (or a proxy) drops our connections
            killed = (
                await conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND application_name = 'corral' "
                        "AND pid <> pg_backend_pid()"
                    )
                )
            ).scalar()
        assert killed
        await asyncio.sleep(0.3)  # idle past the threshold: the next checkout pings
        assert (await store.get_tenant(tenant.id)).id == tenant.id
        assert store.statistics().idle
    finally:
        await admin.dispose()
        await store.aclose()
