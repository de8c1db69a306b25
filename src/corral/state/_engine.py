"""Engines for the SQL store: URL checks, pools, SQLite's pragmas and locking, error mapping.

SQLAlchemy and driver errors are turned into corral errors here and nowhere else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from corral.errors import CorralError, StateError, UsageError

__all__ = [
    "WRITE",
    "Backend",
    "PoolOptions",
    "begin_immediate",
    "configure_sqlite",
    "is_transient",
    "make_engine",
    "make_sync_sqlite_engine",
    "ping_when_idle",
    "redact",
    "translate",
]

logger = logging.getLogger(__name__)

Backend = Literal["sqlite", "postgresql"]

WRITE = "corral_write"
"""Execution option marking a write transaction: on SQLite it begins with BEGIN IMMEDIATE."""

# PostgreSQL: serialization_failure, deadlock_detected. Not expected at READ COMMITTED with the
# statements the store runs, but if the database reports one the transaction is safe to rerun.
_PG_TRANSIENT = frozenset({"40001", "40P01"})
_PG_FOREIGN_KEY = "23503"


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """The bounds of a store's connection pool."""

    pool_size: int = 5
    """Connections kept open."""
    max_overflow: int = 10
    """Extra connections opened under load, closed when returned."""
    pool_timeout_s: float = 30.0
    """How long a call waits for a free connection before it fails."""
    pool_recycle_s: float = 1800.0
    """Connections older than this are replaced (servers and proxies drop idle ones)."""
    sqlite_busy_timeout_s: float = 5.0
    """How long SQLite waits for another connection's write lock before "database is locked"."""

    def __post_init__(self) -> None:
        for name in ("pool_size", "max_overflow"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"{name} must be an int >= 0, got {value!r}")
        if self.pool_size < 1:
            raise UsageError(f"pool_size must be at least 1, got {self.pool_size!r}")
        for name in ("pool_timeout_s", "pool_recycle_s", "sqlite_busy_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UsageError(f"{name} must be a positive number of seconds, got {value!r}")


def redact(url: sa.URL) -> str:
    """Return the URL without its password, for messages and logs."""
    return url.render_as_string(hide_password=True)


def parse_url(url: str | sa.URL) -> tuple[sa.URL, Backend]:
    """Return the parsed URL and its backend, or raise `UsageError` naming what is wrong."""
    try:
        parsed = sa.make_url(url)
    except sa_exc.ArgumentError as exc:
        raise UsageError(f"database URL {url!r} is not valid: {exc}") from None
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "sqlite":
        if driver != "aiosqlite":
            raise UsageError(
                f"database URL {redact(parsed)!r}: use the async driver, 'sqlite+aiosqlite:///PATH'"
            )
        database = parsed.database or ""
        if database in ("", ":memory:") or "mode=memory" in str(parsed.query):
            raise UsageError(
                f"database URL {redact(parsed)!r} is an in-memory SQLite database, private to each "
                "pooled connection; give a file path, or use corral.state.MemoryStore"
            )
        return parsed, "sqlite"
    if backend == "postgresql":
        if driver != "asyncpg":
            raise UsageError(
                f"database URL {redact(parsed)!r}: use the async driver, "
                "'postgresql+asyncpg://USER@HOST/DB' (pip install 'corral[postgres]')"
            )
        return parsed, "postgresql"
    raise UsageError(
        f"database URL {redact(parsed)!r}: corral stores state in SQLite "
        f"('sqlite+aiosqlite:///PATH') or PostgreSQL ('postgresql+asyncpg://...'), not {backend!r}"
    )


def make_engine(url: sa.URL, backend: Backend, options: PoolOptions) -> AsyncEngine:
    """Return a pooled engine for `url`, configured for the store's transactions."""
    kwargs: dict[str, Any] = {
        "pool_size": options.pool_size,
        "max_overflow": options.max_overflow,
        "pool_timeout": options.pool_timeout_s,
        "pool_recycle": options.pool_recycle_s,
    }
    if backend == "sqlite":
        # Migrations' engine (the store's own calls go through _sqlite.SqliteRunner). No
        # pre-ping: a file does not drop connections.
        kwargs["poolclass"] = sa.AsyncAdaptedQueuePool
        engine = create_async_engine(url, **kwargs)
        configure_sqlite(engine.sync_engine, options.sqlite_busy_timeout_s)
        return engine
    kwargs["connect_args"] = {"server_settings": {"application_name": "corral"}}
    engine = create_async_engine(url, **kwargs)
    ping_when_idle(engine.sync_engine, PING_AFTER_IDLE_S)
    return engine


PING_AFTER_IDLE_S = 10.0
"""PostgreSQL: a pooled connection idle this long is pinged before a call gets it."""


def ping_when_idle(engine: sa.Engine, idle_s: float) -> None:
    """Ping a pooled connection before lending it, if it sat idle `idle_s` or longer.

    A connection the server or a proxy dropped (they drop idle ones) is then replaced before a
    call gets it. SQLAlchemy's `pool_pre_ping` pings on every checkout: over asyncpg that is a
    BEGIN, a query and a ROLLBACK, three round trips before each transaction, which under load
    held every pooled connection twice as long. A connection in use moments ago is lent as it is;
    if the server went away meanwhile, the call fails with a StateError and SQLAlchemy replaces
    every pooled connection.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["corral_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("corral_idle_since")
        if since is None or time.monotonic() - since < idle_s:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:
            # The pool discards this connection and lends another (a documented contract).
            raise sa_exc.DisconnectionError(f"a pooled connection was gone: {exc}") from exc


def make_sync_sqlite_engine(
    url: sa.URL,
    options: PoolOptions,
    *,
    pool_size: int,
    max_overflow: int,
    busy_timeout_s: float | None = None,
    autocheckpoint: bool = True,
    recycle: bool = True,
    begin_event: bool = True,
) -> sa.Engine:
    """Return a pooled engine on the stdlib `sqlite3` driver (see corral/state/_sqlite.py).

    Connections may be used by another thread than the one that made them (never by two at
    once), so the driver's same-thread check is off. `busy_timeout_s` replaces the options'
    for connections in use (None: the options'); `autocheckpoint=False` leaves the WAL to be
    checkpointed by someone else; `recycle=False` keeps connections for good;
    `begin_event=False` leaves BEGIN to the caller (`begin_immediate`).
    """
    engine = sa.create_engine(
        url.set(drivername="sqlite+pysqlite"),
        poolclass=sa.QueuePool,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=options.pool_timeout_s,
        pool_recycle=options.pool_recycle_s if recycle else -1,
        connect_args={"check_same_thread": False},
    )
    configure_sqlite(
        engine,
        options.sqlite_busy_timeout_s,
        busy_timeout_after_s=busy_timeout_s,
        autocheckpoint=autocheckpoint,
        begin_event=begin_event,
    )
    return engine


def configure_sqlite(
    engine: sa.Engine,
    busy_timeout_s: float,
    *,
    busy_timeout_after_s: float | None = None,
    autocheckpoint: bool = True,
    begin_event: bool = True,
) -> None:
    """Give every connection of `engine` WAL, the busy timeout, foreign keys, and our BEGINs.

    `busy_timeout_after_s`, if given, replaces the busy timeout once the connection is set up.
    `begin_event=False`: no "begin" listener; the caller runs `begin_immediate` in each
    transaction. An engine with any connection event listener dispatches every execution event
    (before and after each statement and cursor call) through its listener lists: about a sixth
    of a write transaction's CPU, for nothing on the writer, whose transactions all begin alike.
    """
    busy_ms = round(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Turn off the driver's own transaction handling (it begins late, with a plain BEGIN,
        # and not before DDL) so that `_on_begin` alone decides how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # The busy timeout first: switching a new database to WAL takes a lock too, and
            # servers starting together on one file would otherwise fail it at once.
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            # WAL: readers do not block the writer, nor the writer readers.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # In WAL mode NORMAL never corrupts the database and survives an application crash;
            # only a power loss may undo the latest commits. FULL would fsync every commit.
            cursor.execute("PRAGMA synchronous=NORMAL")
            if not autocheckpoint:
                cursor.execute("PRAGMA wal_autocheckpoint=0")
            if busy_timeout_after_s is not None:
                cursor.execute(f"PRAGMA busy_timeout={round(busy_timeout_after_s * 1000)}")
        finally:
            cursor.close()

    if not begin_event:
        return

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        # A write transaction takes the write lock when it begins, waiting up to busy_timeout.
        # A deferred BEGIN would take it at the first write, and a transaction that read first
        # then fails at once with "database is locked" (SQLITE_BUSY_SNAPSHOT): busy_timeout
        # cannot help, since its snapshot is already stale.
        write = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def begin_immediate(connection: sa.Connection) -> None:
    """Take SQLite's write lock now, on a connection of an engine made with `begin_event=False`.

    Run inside `connection.begin()`: SQLAlchemy's commit and rollback end the transaction (the
    driver commits whatever transaction is open). A lock held by another connection fails at
    once (the writer's busy timeout is 0) as an `OperationalError` that `is_transient` knows.
    """
    raw = connection.connection.dbapi_connection
    dialect = connection.dialect
    try:
        cursor = raw.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute("BEGIN IMMEDIATE")
        finally:
            cursor.close()
    except dialect.loaded_dbapi.Error as exc:
        raise sa_exc.DBAPIError.instance(
            "BEGIN IMMEDIATE",
            None,
            exc,
            dialect.loaded_dbapi.Error,
            connection_invalidated=dialect.is_disconnect(exc, raw, None),
        ) from exc


def _orig(exc: BaseException) -> BaseException | None:
    return exc.orig if isinstance(exc, sa_exc.DBAPIError) else None


def _sqlstate(exc: BaseException) -> str | None:
    orig = _orig(exc)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def is_transient(exc: BaseException) -> bool:
    """Whether a failed transaction may simply be run again (nothing of it was committed)."""
    if not isinstance(exc, sa_exc.OperationalError | sa_exc.DBAPIError):
        return False
    if _sqlstate(exc) in _PG_TRANSIENT:
        return True
    text = str(_orig(exc) or "").lower()
    return "database is locked" in text or "database table is locked" in text


def translate(
    exc: BaseException, what: str, *, on_foreign_key: Callable[[], CorralError] | None = None
) -> CorralError:
    """Return the corral error standing for a SQLAlchemy or driver error `exc` raised by `what`.

    The message names what failed and the database's own reason, never the statement's
    parameters (they may hold secrets such as API key hashes).
    """
    orig = _orig(exc)
    reason = (str(orig) if orig is not None else str(exc)).strip().splitlines()
    detail = f"{type(orig or exc).__name__}: {reason[0] if reason else ''}"
    if isinstance(exc, sa_exc.IntegrityError) and on_foreign_key is not None:
        if _sqlstate(exc) == _PG_FOREIGN_KEY or "foreign key constraint" in detail.lower():
            return on_foreign_key()
    if isinstance(exc, sa_exc.TimeoutError):
        return StateError(f"{what}: no database connection came free in time ({exc})")
    if is_transient(exc):
        return StateError(f"{what}: the database stayed locked by other writers ({detail})")
    if isinstance(exc, OSError | TimeoutError) or (
        isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    ):
        return StateError(f"{what}: the database could not be reached ({detail})")
    if (
        isinstance(exc, sa_exc.NoSuchTableError)
        or _sqlstate(exc) == "42P01"
        or "no such table" in detail.lower()
    ):
        return StateError(
            f"{what}: the database does not have the expected schema ({detail}); "
            "run `corral db upgrade`"
        )
    return StateError(f"{what}: the database failed ({detail})")
