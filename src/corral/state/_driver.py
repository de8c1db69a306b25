"""Write transactions run on the driver: the store's own Core statements, compiled once.

Written by hand beside SQLAlchemy, and said so because we prefer the library: a write transaction
through SQLAlchemy's execution path (execution context, parameter and result set-up for each
statement, the connection's transaction bookkeeping) cost 308 us for a run's three writes in a
loop, the same statements on the `sqlite3` driver 89 us; under `corral bench server` the store's
writes were a fifth of the server's CPU. On PostgreSQL the driver is SQLAlchemy's own asyncpg
adapter (a DB-API face on asyncpg, awaited through SQLAlchemy's greenlet bridge): its writes on
it took the server from 10.40 M to 9.37 M instructions per bench run. SQLAlchemy still does
everything that makes SQL right: the statements are the store's Core statements, compiled by the
backend's SQLAlchemy dialect, with its own bind and result processors for the column types, so
what is stored and read back is what SQLAlchemy would store and read. What this module adds is
only the loop: bind, execute, fetch, and errors wrapped as SQLAlchemy wraps them, so the store's
error mapping (`translate`, `is_transient`) is unchanged. Reads keep SQLAlchemy's execution.

`DriverConnection` offers the part of `sa.Connection` the store's statements use: `execute(stmt,
params)` with one mapping or a list of them (executemany), and a result's `first()`, `scalar()`
and iteration, rows read by attribute. `run_on_driver` runs a transaction's function on it.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from sqlalchemy.engine import Dialect

__all__ = ["DriverConnection", "run_on_driver"]

Processor = Callable[[Any], Any] | None
T = TypeVar("T")


class _Plan(NamedTuple):
    compiled: Any  # sqlalchemy.sql.compiler.SQLCompiler
    sql: str
    names: tuple[str, ...]
    binds: tuple[Processor, ...]
    results: tuple[Processor, ...]


# Plans of the statements in use, per statement object, dialect (its name and driver: SQL and
# parameters differ between them, and one process may use two) and parameter names: the store's
# hot statements are built once (functools.cache), so their plans are made once too; a statement
# built for one call takes its plans with it when it goes.
_PlanKey = tuple[str, str, tuple[str, ...]]
_PLANS: weakref.WeakKeyDictionary[Any, dict[_PlanKey, _Plan]] = weakref.WeakKeyDictionary()


def _plan(stmt: Any, keys: tuple[str, ...], dialect: Dialect) -> _Plan:
    by_keys = _PLANS.get(stmt)
    if by_keys is None:
        by_keys = _PLANS[stmt] = {}
    key = (dialect.name, dialect.driver, keys)
    plan = by_keys.get(key)
    if plan is None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys) if keys else None)
        if compiled.post_compile_params:
            raise sa_exc.ArgumentError(
                f"a statement with 'expanding' parameters cannot run on the driver: {stmt}"
            )
        names = tuple(compiled.positiontup or ())
        # The dialect's own implementation of each type (SQLite's DATETIME for DateTime...)
        # holds its processors, as SQLAlchemy's execution takes them.
        binds = tuple(
            compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in names
        )
        # The columns a SELECT or a RETURNING gives back, in order, with their types.
        returned = stmt.exported_columns if isinstance(stmt, sa.Select | sa.UpdateBase) else ()
        results = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in returned
        )
        plan = by_keys[key] = _Plan(compiled, compiled.string, names, binds, results)
    return plan


@functools.cache
def _row_type(fields: tuple[str, ...]) -> Any:
    """Return a named tuple type per column list: rows read by attribute, as SQLAlchemy's are."""
    return collections.namedtuple("Row", fields)


class DriverResult:
    """The rows of one statement, read by attribute as SQLAlchemy's rows are."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def first(self) -> Any:
        """Return the first row, or None."""
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        """Return the first column of the first row, or None."""
        return self._rows[0][0] if self._rows else None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class DriverConnection:
    """Execute Core statements on a `sqlite3` connection, in the caller's transaction."""

    __slots__ = ("_dbapi", "_dialect")

    def __init__(self, dbapi_connection: Any, dialect: Dialect) -> None:
        self._dbapi = dbapi_connection
        self._dialect = dialect

    @property
    def dialect(self) -> Dialect:
        """SQLite's dialect (statements that depend on the backend read it)."""
        return self._dialect

    def execute(
        self,
        stmt: sa.Executable,
        params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> DriverResult:
        """Run `stmt` with `params` (a list: once per mapping) and return its rows."""
        many = isinstance(params, Sequence) and not isinstance(params, Mapping)
        rows_params: Sequence[Mapping[str, Any]] = (
            params if many else [params or {}]  # type: ignore[list-item,assignment]
        )
        keys = tuple(rows_params[0]) if rows_params else ()
        plan = _plan(stmt, keys, self._dialect)
        bound = [self._bind(plan, values) for values in rows_params]
        cursor = self._dbapi.cursor()
        try:
            if many:
                cursor.executemany(plan.sql, bound)
                return DriverResult([])
            cursor.execute(plan.sql, bound[0])
            if cursor.description is None:
                return DriverResult([])
            return DriverResult(self._rows(plan, cursor))
        except self._dialect.loaded_dbapi.Error as exc:
            raise sa_exc.DBAPIError.instance(
                plan.sql,
                bound,
                exc,
                self._dialect.loaded_dbapi.Error,
                connection_invalidated=self._dialect.is_disconnect(exc, self._dbapi, cursor),
            ) from exc
        finally:
            cursor.close()

    @staticmethod
    def _bind(plan: _Plan, values: Mapping[str, Any]) -> list[Any]:
        merged = plan.compiled.construct_params(values) if values else plan.compiled.params
        out = []
        for name, process in zip(plan.names, plan.binds, strict=True):
            value = merged[name]
            out.append(process(value) if process is not None else value)
        return out

    def _rows(self, plan: _Plan, cursor: Any) -> list[Any]:
        fields = tuple(column[0] for column in cursor.description)
        row_type = _row_type(fields)
        processors = plan.results if len(plan.results) == len(fields) else (None,) * len(fields)
        rows = []
        for raw in cursor.fetchall():
            values = [
                process(value) if process is not None else value
                for process, value in zip(processors, raw, strict=True)
            ]
            rows.append(row_type(*values))
        return rows


def run_on_driver(connection: sa.Connection, fn: Callable[[Any], T]) -> T:
    """Run `fn` on `connection`'s driver and commit there; roll back if it raises.

    `fn` gets a `DriverConnection` in place of `connection`. The transaction is the driver's:
    on SQLite the one `begin_immediate` opened, on PostgreSQL the one SQLAlchemy's asyncpg
    adapter opens at the first statement (none on an autocommit connection, where each
    statement commits alone). Called in a greenlet there (`AsyncConnection.run_sync`), as the
    adapter awaits asyncpg through SQLAlchemy's own bridge.
    """
    dbapi = connection.connection.dbapi_connection
    assert dbapi is not None
    try:
        result = fn(DriverConnection(dbapi, connection.dialect))
        dbapi.commit()
    except BaseException:
        # A connection that broke cannot roll back; the first error is the one.
        with contextlib.suppress(Exception):
            dbapi.rollback()
        raise
    return result
