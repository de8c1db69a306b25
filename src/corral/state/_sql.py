"""`SqlStore`: the store on SQLite or PostgreSQL (asyncpg), through SQLAlchemy 2.

The statements (`_sql_records`, `_sql_memory`) are plain SQLAlchemy Core, run in one transaction
per call: on PostgreSQL through `AsyncConnection.run_sync` over asyncpg, on SQLite by
`corral.state._sqlite.SqliteRunner` (writes whole on the event loop, reads in threads; the file
explains why not aiosqlite, which the URL still names and migrations still use).

Concurrency, per backend:

- No lock of corral's own around the database: every call takes a pooled connection (bounded:
  `pool_size` + `max_overflow`, waiting at most `pool_timeout_s`) and runs one transaction;
  PostgreSQL calls of a single write statement run in autocommit (one round trip).
- PostgreSQL runs at READ COMMITTED; what must not race is serialised by row locks taken by the
  statements themselves (the session's counter row for appends, a memory row for increments).
- SQLite (WAL) runs reads concurrently, in threads, and write transactions one at a time on the
  loop: they begin with BEGIN IMMEDIATE; while another process holds the write lock they are
  retried after async backoffs for up to `sqlite_busy_timeout_s`, then rerun a few more times
  with a bounded, jittered backoff.

Message sequence numbers: ``UPDATE sessions SET last_seq = last_seq + :n ... RETURNING
last_seq`` in the transaction that inserts the messages. The UPDATE locks the session's row until
commit, so concurrent appends to one session take turns and each gets the next run of numbers; a
rolled-back append also rolls back its counter, so there are no gaps. The primary key (tenant,
session, seq) would refuse a duplicate number if anything else went wrong.

The statements themselves: `corral.state._sql_records` (tenants, keys, sessions, messages,
requests) and `corral.state._sql_memory` (versioned memory, with its concurrency notes).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from corral._retry import Backoff
from corral._types import AsyncResource, JSONValue
from corral.errors import CorralError, NotFound, StateError, UsageError
from corral.messages import Message
from corral.state import _keys, _rules
from corral.state import _sql_records as _records
from corral.state._driver import run_on_driver
from corral.state._engine import (
    WRITE,
    Backend,
    PoolOptions,
    is_transient,
    make_engine,
    parse_url,
    redact,
    translate,
)
from corral.state._lifecycle import Lifecycle
from corral.state._migrate import current_revision, head_revision, upgrade
from corral.state._sql_memory import MemoryStatements, list_scope, read_audit
from corral.state._sqlite import SqliteRunner
from corral.state._tables import memory, memory_audit, sessions
from corral.state.base import (
    ApiKeyRecord,
    AuditEntry,
    MemoryKind,
    MemoryRecord,
    RequestRecord,
    RequestStatus,
    SessionRecord,
    StoredMessage,
    StoreStatistics,
    Tenant,
)

__all__ = ["SqlStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Reruns of a transaction the database reported locked (SQLite) or unserialisable (PostgreSQL),
# after SQLite's own busy_timeout wait: rare, so few and short.
_LOCKED_BACKOFF = Backoff(attempts=5, base_s=0.05, max_s=1.0)


def _now() -> datetime:
    return datetime.now(UTC)


class SqlStore(AsyncResource):
    """A `Store` in a SQL database: SQLite for one machine, PostgreSQL for several servers.

    Open it with `await SqlStore.connect(url)`; close it with `aclose()` or `async with`.
    Safe for many tasks at once, and for several processes sharing one database.
    """

    def __init__(self, engine: AsyncEngine | SqliteRunner, backend: Backend, url: sa.URL) -> None:
        """Wrap what `connect` made (PostgreSQL: an async engine; SQLite: worker threads)."""
        self._engine = engine
        self._writer = (
            engine.execution_options(**{WRITE: True}) if isinstance(engine, AsyncEngine) else None
        )
        # PostgreSQL: a call of one statement runs without BEGIN and COMMIT around it, one round
        # trip instead of three (each a turn of a busy loop, holding a pooled connection).
        self._autocommit = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if isinstance(engine, AsyncEngine)
            else None
        )
        self._backend = backend
        self._url = url
        self._insert: Any = postgresql.insert if backend == "postgresql" else sqlite.insert
        self._life = Lifecycle(f"the store at {redact(url)}")
        self._keys = _keys.KeyCache(0.0)

    @classmethod
    async def connect(
        cls,
        url: str | sa.URL,
        *,
        upgrade: bool = False,
        pool_size: int = 5,
        max_overflow: int = 10,
        pool_timeout_s: float = 30.0,
        pool_recycle_s: float = 1800.0,
        sqlite_busy_timeout_s: float = 5.0,
        api_key_cache_s: float = 0.0,
    ) -> SqlStore:
        """Open a store on `url` and check its schema is current.

        Args:
            url: ``sqlite+aiosqlite:///PATH`` or ``postgresql+asyncpg://USER:PASS@HOST/DB``.
            upgrade: Migrate the database to the newest schema first (see `upgrade`).
            pool_size: Connections kept open.
            max_overflow: Extra connections opened under load.
            pool_timeout_s: How long a call waits for a connection before `StateError`.
            pool_recycle_s: Connections older than this are replaced.
            sqlite_busy_timeout_s: How long SQLite waits for another writer's lock.
            api_key_cache_s: Trust a verified API key this long without reading it again (a
                server checks a key on every request). Revoking through this store takes
                effect at once; a key revoked by another process works up to this long more.
                0: read every time.

        Raises:
            UsageError: an unsupported URL or a bad pool option.
            StateError: the database cannot be reached, or is not at the newest migration
                (run `corral db upgrade`, or pass `upgrade=True`).
        """
        parsed, backend = parse_url(url)
        options = PoolOptions(
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout_s=pool_timeout_s,
            pool_recycle_s=pool_recycle_s,
            sqlite_busy_timeout_s=sqlite_busy_timeout_s,
        )
        cache_s = api_key_cache_s
        if isinstance(cache_s, bool) or not isinstance(cache_s, int | float) or cache_s < 0:
            raise UsageError(f"api_key_cache_s must be seconds >= 0, got {cache_s!r}")
        if upgrade:
            await _upgrade(parsed)
        engine: AsyncEngine | SqliteRunner
        if backend == "sqlite":
            engine = await SqliteRunner.open(parsed, options)
        else:
            engine = make_engine(parsed, backend, options)
        store = cls(engine, backend, parsed)
        store._keys = _keys.KeyCache(float(cache_s))
        try:
            await store._check_schema()
        except BaseException:
            await store._dispose()
            raise
        return store

    async def _check_schema(self) -> None:
        head = head_revision()
        at = await self._tx("checking the schema", current_revision, write=False)
        if at != head:
            raise StateError(
                f"the database at {redact(self._url)} is at schema revision {at or 'none'}, "
                f"not {head}: run `corral db upgrade --url URL` first"
            )

    # -- transactions ---------------------------------------------------------------------------

    async def _tx(
        self,
        what: str,
        fn: Callable[[sa.Connection], T],
        *,
        write: bool,
        on_foreign_key: Callable[[], CorralError] | None = None,
        one_statement: bool = False,
    ) -> T:
        """Run `fn` in one transaction, rerunning it while the database reports it locked.

        `one_statement`: `fn` writes with a single statement (what else it runs only reads, and
        needs no snapshot shared with the write), so on PostgreSQL it may run in autocommit.

        The one place database errors become corral errors. Cancelled, a PostgreSQL call is
        interrupted and rolls back; a SQLite read first runs to its end in its thread (see
        `_run_to_end`); a SQLite write runs on the loop, so it is never cut half-way (it can only
        be cancelled while it sleeps between attempts, when no transaction is open).
        """
        self._life.enter()
        try:
            if self._backend == "sqlite" and not write:
                return await _run_to_end(self._attempts(fn, write))
            return await self._attempts(fn, write, one_statement)
        except (sa_exc.SQLAlchemyError, OSError, TimeoutError) as exc:
            raise translate(exc, what, on_foreign_key=on_foreign_key) from exc
        finally:
            self._life.exit()

    async def _attempts(
        self, fn: Callable[[sa.Connection], T], write: bool, one_statement: bool = False
    ) -> T:
        attempt = 1
        while True:
            try:
                return await self._once(fn, write, one_statement)
            except sa_exc.DBAPIError as exc:
                # Rerunning is safe: the transaction rolled back, nothing of it was committed.
                delay = _LOCKED_BACKOFF.next_delay_s(attempt) if is_transient(exc) else None
                if delay is None:
                    raise
                logger.debug(
                    "transaction found the database locked; rerun %d in %.3fs", attempt, delay
                )
            await asyncio.sleep(delay)
            attempt += 1

    async def _once(
        self, fn: Callable[[sa.Connection], T], write: bool, one_statement: bool = False
    ) -> T:
        """Run `fn` in one transaction: SQLite's way (see _sqlite.py), or over asyncpg."""
        if isinstance(self._engine, SqliteRunner):
            return await self._engine.run(fn, write=write)
        if one_statement and self._autocommit is not None:
            return await _on_driver(self._autocommit, fn)
        if write and self._writer is not None:
            return await _on_driver(self._writer, fn)
        async with self._engine.begin() as conn:
            # The statements are plain (sync) SQLAlchemy; run_sync drives them over asyncpg.
            return await conn.run_sync(fn)

    def _bytewise(self, column: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
        """Order by code point, as Python and SQLite do, whatever the database's locale."""
        return column.collate("C") if self._backend == "postgresql" else column

    def _memory(
        self, conn: sa.Connection, tenant_id: str, scope: str, key: str
    ) -> MemoryStatements:
        return MemoryStatements(conn, self._insert, tenant_id, scope, key)

    # -- tenants and API keys -------------------------------------------------------------------

    async def create_tenant(self, name: str, *, tenant_id: str | None = None) -> Tenant:
        """Create a tenant; `tenant_id` defaults to a fresh random id."""
        name = _rules.check_text(name, "tenant name")
        tenant_id = _rules.check_id(tenant_id or uuid.uuid4().hex, "tenant id")
        tenant = Tenant(tenant_id, name, _now())
        return await self._tx(
            "creating a tenant",
            lambda conn: _records.create_tenant(conn, self._insert, tenant),
            write=True,
        )

    async def get_tenant(self, tenant_id: str) -> Tenant:
        """Return the tenant, or raise `NotFound`."""
        return await self._tx(
            "reading a tenant", lambda conn: _records.read_tenant(conn, tenant_id), write=False
        )

    async def create_api_key(self, tenant_id: str, *, name: str = "") -> tuple[str, ApiKeyRecord]:
        """Create an API key; return the key (shown once) and its record (no plaintext kept)."""
        name = _rules.check_text(name, "API key name", empty=True)
        key, key_id, digest = _keys.new_key()
        record = ApiKeyRecord(key_id, tenant_id, name, _now())
        await self._tx(
            "creating an API key",
            lambda conn: _records.create_api_key(conn, record, digest),
            write=True,
            on_foreign_key=lambda: NotFound(f"no tenant {tenant_id!r}"),
        )
        return key, record

    async def tenant_for_key(self, key: str) -> Tenant | None:
        """Return the tenant of a valid, unrevoked key, or None."""
        key_id = _keys.parse_key(key)
        if key_id is None:
            return None
        cached = self._keys.get(key)
        if isinstance(cached, Tenant):
            return cached
        generation = self._keys.generation
        tenant = await self._tx(
            "looking up an API key",
            lambda conn: _records.tenant_for_key(conn, key, key_id),
            write=False,
        )
        if tenant is not None:
            self._keys.put(key, key_id, tenant, generation=generation)
        return tenant

    async def revoke_api_key(self, tenant_id: str, key_id: str) -> None:
        """Revoke a key by its id; idempotent. Raises `NotFound`."""
        await self._tx(
            "revoking an API key",
            lambda conn: _records.revoke_api_key(conn, tenant_id, key_id),
            write=True,
        )
        self._keys.forget(key_id)

    # -- sessions and messages ------------------------------------------------------------------

    async def create_session(
        self,
        tenant_id: str,
        *,
        session_id: str | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
    ) -> SessionRecord:
        """Create a session; `session_id` defaults to a fresh random id."""
        session_id = _rules.check_id(session_id or uuid.uuid4().hex, "session id")
        meta = _rules.encode_json(dict(metadata or {}), "session metadata")
        record = SessionRecord(session_id, tenant_id, _now(), _rules.decode_json(meta))
        return await self._tx(
            "creating a session",
            lambda conn: _records.create_session(conn, self._insert, record, meta),
            write=True,
            on_foreign_key=lambda: NotFound(f"no tenant {tenant_id!r}"),
            one_statement=True,
        )

    async def get_session(self, tenant_id: str, session_id: str) -> SessionRecord:
        """Return the session, or raise `NotFound`."""
        return await self._tx(
            "reading a session",
            lambda conn: _records.read_session(conn, tenant_id, session_id),
            write=False,
        )

    async def list_sessions(
        self, tenant_id: str, *, limit: int | None = None
    ) -> list[SessionRecord]:
        """Return the tenant's sessions, oldest first."""
        limit = _rules.check_limit(limit)
        order = self._bytewise(sessions.c.id)
        return await self._tx(
            "listing sessions",
            lambda conn: _records.list_sessions(conn, tenant_id, limit, order),
            write=False,
        )

    async def delete_session(self, tenant_id: str, session_id: str) -> None:
        """Delete a session with its messages, requests and session-scoped memory."""
        await self._tx(
            "deleting a session",
            lambda conn: _records.delete_session(conn, tenant_id, session_id),
            write=True,
        )

    async def append_messages(
        self,
        tenant_id: str,
        session_id: str,
        request_id: str | None,
        messages: Sequence[Message],
    ) -> list[int]:
        """Append messages at once; return their gap-free sequence numbers."""
        if request_id is not None:
            _rules.check_id(request_id, "request id")
        bodies = [_rules.encode_message(m, i) for i, m in enumerate(messages)]
        if not bodies:
            await self.get_session(tenant_id, session_id)
            return []
        return await self._tx(
            "appending messages",
            lambda conn: _records.append(conn, tenant_id, session_id, request_id, bodies),
            write=True,
        )

    async def list_messages(
        self, tenant_id: str, session_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[StoredMessage]:
        """Return the session's messages with `seq > after_seq`, in order."""
        after_seq = _rules.check_after_seq(after_seq)
        limit = _rules.check_limit(limit)
        return await self._tx(
            "listing messages",
            lambda conn: _records.list_messages(conn, tenant_id, session_id, after_seq, limit),
            write=False,
        )

    # -- requests -------------------------------------------------------------------------------

    async def record_request(
        self,
        tenant_id: str,
        session_id: str,
        *,
        request_id: str | None = None,
        idempotency_key: str | None = None,
        status: RequestStatus = "running",
    ) -> tuple[RequestRecord, bool]:
        """Record a new request, or return the one recorded with the same idempotency key."""
        request_id = _rules.check_id(request_id or uuid.uuid4().hex, "request id")
        if idempotency_key is not None:
            _rules.check_text(idempotency_key, "idempotency key")
        status = _rules.check_new_status(status)
        record = RequestRecord(
            request_id, tenant_id, session_id, status, None, idempotency_key, _now(), None
        )
        return await self._tx(
            "recording a request",
            lambda conn: _records.record_request(conn, self._insert, record),
            write=True,
            on_foreign_key=lambda: NotFound(f"no session {session_id!r}"),
            # The insert, then (if it yielded to an earlier request with the same key) a read
            # of that request, which an autocommit read sees since it committed.
            one_statement=True,
        )

    async def start_request(self, tenant_id: str, request_id: str) -> RequestRecord:
        """Move a queued request to "running"."""
        return await self._tx(
            "starting a request",
            lambda conn: _records.transition(
                conn,
                tenant_id,
                request_id,
                allowed=("queued",),
                values={"status": "running"},
                what="started",
            ),
            write=True,
        )

    async def finish_request(
        self,
        tenant_id: str,
        request_id: str,
        *,
        status: RequestStatus,
        error: str | None = None,
        messages: Sequence[Message] = (),
    ) -> RequestRecord:
        """Give a request its final status and finish time, and append its turn's messages."""
        values = {
            "status": _rules.check_final_status(status, error),
            "error": error,
            "finished_at": _now(),
        }
        bodies = [_rules.encode_message(m, i) for i, m in enumerate(messages)]

        def finish(conn: sa.Connection) -> RequestRecord:
            record = _records.transition(
                conn,
                tenant_id,
                request_id,
                allowed=("queued", "running"),
                values=values,
                what="finished",
            )
            if bodies:
                _records.append(conn, tenant_id, record.session_id, request_id, bodies)
            return record

        return await self._tx("finishing a request", finish, write=True)

    async def get_request(self, tenant_id: str, request_id: str) -> RequestRecord:
        """Return the request, or raise `NotFound`."""
        return await self._tx(
            "reading a request",
            lambda conn: _records.read_request(conn, tenant_id, request_id),
            write=False,
        )

    async def find_request(self, tenant_id: str, idempotency_key: str) -> RequestRecord | None:
        """Return the request recorded with this idempotency key, if any."""
        return await self._tx(
            "finding a request",
            lambda conn: _records.find_request(conn, tenant_id, idempotency_key),
            write=False,
        )

    # -- versioned memory -----------------------------------------------------------------------

    async def memory_get(self, tenant_id: str, scope: str, key: str) -> MemoryRecord | None:
        """Return the record, or None if the key does not exist."""
        _rules.check_scope(scope)
        _rules.check_key(key)

        def op(conn: sa.Connection) -> MemoryRecord | None:
            return self._memory(conn, tenant_id, scope, key).live()

        return await self._tx("reading memory", op, write=False)

    async def memory_list(self, tenant_id: str, scope: str) -> list[MemoryRecord]:
        """Return the live records of a scope, by key."""
        _rules.check_scope(scope)

        order = self._bytewise(memory.c.key)
        return await self._tx(
            "listing memory",
            lambda conn: list_scope(conn, tenant_id, scope, order),
            write=False,
        )

    async def _memory_write(
        self,
        what: str,
        tenant_id: str,
        scope: str,
        key: str,
        fn: Callable[[MemoryStatements], T],
    ) -> T:
        def op(conn: sa.Connection) -> T:
            return fn(self._memory(conn, tenant_id, scope, key))

        return await self._tx(
            f"{what} memory key {key!r} in {scope}",
            op,
            write=True,
            on_foreign_key=lambda: NotFound(f"no tenant {tenant_id!r}"),
        )

    async def memory_put(
        self,
        tenant_id: str,
        scope: str,
        key: str,
        value: JSONValue,
        *,
        if_version: int | None,
        writer: str,
        kind: MemoryKind = "json",
    ) -> MemoryRecord:
        """Write a value if the key is at `if_version` (None: create it)."""
        expected, writer = _rules.check_versioned_write(
            scope, key, if_version, writer, create_allowed=True
        )
        kind = _rules.check_kind(kind, value)
        text = _rules.encode_json(value, f"the value of memory key {key!r}")
        if expected is None:
            return await self._memory_write(
                "creating", tenant_id, scope, key, lambda m: m.create(kind, text, writer)
            )
        return await self._memory_write(
            "writing", tenant_id, scope, key, lambda m: m.replace(expected, kind, text, writer)
        )

    async def memory_patch(
        self,
        tenant_id: str,
        scope: str,
        key: str,
        patch: Mapping[str, JSONValue],
        *,
        if_version: int,
        writer: str,
    ) -> MemoryRecord:
        """Apply an RFC 7386 merge patch to a "json" value at `if_version`."""
        expected, writer = _rules.check_versioned_write(
            scope, key, if_version, writer, create_allowed=False
        )
        assert expected is not None
        patch = _rules.check_patch(patch)
        _rules.encode_json(dict(patch), f"the patch of memory key {key!r}")
        return await self._memory_write(
            "patching", tenant_id, scope, key, lambda m: m.patch(expected, patch, writer)
        )

    async def memory_append(
        self, tenant_id: str, scope: str, key: str, item: JSONValue, *, writer: str
    ) -> MemoryRecord:
        """Append `item` to the list at `key` (created if absent); never loses an append."""
        writer = _rules.check_write(scope, key, writer)
        _rules.encode_json(item, f"the item appended to memory key {key!r}")
        return await self._memory_write(
            "appending to",
            tenant_id,
            scope,
            key,
            lambda m: m.reduce("append", lambda cur: _rules.appended(cur, item), writer),
        )

    async def memory_increment(
        self, tenant_id: str, scope: str, key: str, by: int | float = 1, *, writer: str
    ) -> MemoryRecord:
        """Add `by` to the number at `key` (created if absent); never loses an increment."""
        writer = _rules.check_write(scope, key, writer)
        by = _rules.check_number(by)
        return await self._memory_write(
            "incrementing",
            tenant_id,
            scope,
            key,
            lambda m: m.reduce("increment", lambda cur: _rules.incremented(cur, by), writer),
        )

    async def memory_delete(
        self, tenant_id: str, scope: str, key: str, *, if_version: int, writer: str
    ) -> int:
        """Delete the key if it is at `if_version`; return the deletion's version."""
        expected, writer = _rules.check_versioned_write(
            scope, key, if_version, writer, create_allowed=False
        )
        assert expected is not None
        return await self._memory_write(
            "deleting", tenant_id, scope, key, lambda m: m.delete(expected, writer)
        )

    async def audit(
        self,
        tenant_id: str,
        *,
        scope: str | None = None,
        key: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Return memory writes, oldest first."""
        where = [memory_audit.c.tenant_id == tenant_id]
        if scope is not None:
            where.append(memory_audit.c.scope == _rules.check_scope(scope))
        if key is not None:
            if scope is None:
                raise UsageError("audit(key=...) needs the key's scope too")
            where.append(memory_audit.c.key == _rules.check_key(key))
        limit = _rules.check_limit(limit)

        return await self._tx(
            "reading the audit log",
            lambda conn: read_audit(conn, where, limit),
            write=False,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def statistics(self) -> StoreStatistics:
        """Return calls in flight and the pool's connections."""
        if isinstance(self._engine, SqliteRunner):
            checked_out, size, overflow = self._engine.pool_statistics()
        else:
            pool = cast(sa.QueuePool, self._engine.pool)
            checked_out, size, overflow = pool.checkedout(), pool.size(), pool.overflow()
        return StoreStatistics(
            name=self._backend,
            in_flight=self._life.in_flight,
            checked_out=checked_out,
            pool_size=size,
            overflow=overflow,
        )

    async def aclose(self) -> None:
        """Stop taking calls, wait for those in flight, then close every connection. Idempotent."""
        if not self._life.start_close():
            await self._life.wait_closed()
            return
        try:
            await self._life.wait_idle()
        finally:
            try:
                await self._dispose()
            finally:
                self._life.closed()

    async def _dispose(self) -> None:
        if isinstance(self._engine, SqliteRunner):
            await self._engine.aclose()
        else:
            await self._engine.dispose()


async def _on_driver(engine: AsyncEngine, fn: Callable[[sa.Connection], T]) -> T:
    """Run a PostgreSQL write on the driver (see _driver.py).

    The store's statements, compiled by SQLAlchemy, in the asyncpg adapter's transaction (none on
    an autocommit engine).
    """
    async with engine.connect() as conn:
        try:
            return await conn.run_sync(run_on_driver, fn)
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated:
                # The connection is lost: not lent again, as SQLAlchemy's own execution does.
                # (Other pooled ones that went with it fail once each, or their idle ping
                # replaces them first: `ping_when_idle`.)
                await conn.invalidate(exc)
            raise


async def _run_to_end(work: Coroutine[Any, Any, T]) -> T:
    """Await `work` to its end even if the caller is cancelled meanwhile, then re-raise that.

    For SQLite reads: each runs whole in a worker thread that cancellation cannot stop; the
    caller waits for it, so a cancelled call never leaves a connection behind. (With aiosqlite,
    a transaction cancelled between statements was seen to leave its connection, write lock held,
    to the garbage collector: test_a_cancelled_append_takes_no_number.) A read is short, so the
    caller waits that long at most.
    """
    task = asyncio.create_task(work)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError as exc:  # held, never swallowed: re-raised below
            cancelled = exc
    if cancelled is not None:
        if not task.cancelled():
            task.exception()  # the caller is gone; its outcome is not reported
        raise cancelled
    return task.result()


async def _upgrade(url: sa.URL) -> None:
    await upgrade(url)
