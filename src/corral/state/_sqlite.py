"""How the store runs SQLite transactions: writes on the event loop, reads in threads.

Why not SQLAlchemy's aiosqlite dialect for the store's calls (migrations still use it): aiosqlite
gives each connection a thread and hops to it for every DB-API call, so one transaction (BEGIN,
a statement, its fetch, COMMIT, the pool's reset) is nine round trips through the event loop.
SQLite is a library in this process, not a server: a transaction is a few hundred microseconds
of work, most of it Python (SQLAlchemy) that holds the GIL wherever it runs.

- Writes run whole, on the event loop's thread, through one connection. A thread would buy no
  parallelism for that Python, and on a busy loop it paid dearly for the GIL: each time the
  write released it inside SQLite it waited for the loop to let it go again, so the server bench
  saw writes queue for a second at 200 clients. On the loop there is no queue at all, writes
  happen in arrival order, and none waits for another of this process. The connection's busy
  timeout is 0, so SQLite never sleeps on the loop: when another process holds the write lock,
  the write is retried after an async backoff until `sqlite_busy_timeout_s` has passed, which is
  what the busy timeout did, without blocking. It never checkpoints either (that may fsync): a
  checkpointer does it in a thread, see below.
- Reads run whole in worker threads (a pool of connections, one per thread): a query may be long
  (a session's history, the audit log), and there it is SQLite's C code, which runs without the
  GIL, so reads never stall the loop. WAL: readers never block the writer, nor it them.
- The checkpointer: once the WAL has grown past `CHECKPOINT_WAL_BYTES` (SQLite's own default
  cadence, 1,000 pages), a PASSIVE checkpoint copies it into the database from a reader thread
  (looked at `CHECKPOINT_EVERY_S` after a write, then as often while writes go on; an idle store
  does not wake), so no write pays for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar, cast

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc

from corral.state._driver import run_on_driver
from corral.state._engine import (
    WRITE,
    PoolOptions,
    begin_immediate,
    is_transient,
    make_sync_sqlite_engine,
)

__all__ = ["CHECKPOINT_EVERY_S", "CHECKPOINT_WAL_BYTES", "SqliteRunner"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

CHECKPOINT_EVERY_S = 1.0
CHECKPOINT_WAL_BYTES = 4 * 1024 * 1024
_LOCKED_FIRST_S = 0.001
_LOCKED_MAX_S = 0.050


class SqliteRunner:
    """Runs `fn(connection)` in one transaction: a write on the loop, a read in a thread.

    Open with `await SqliteRunner.open(url, options)`, close with `aclose()` (no call in flight).
    """

    def __init__(self, url: sa.URL, options: PoolOptions) -> None:
        """Make the engines and threads; `open` also makes the writer's connection."""
        readers = options.pool_size + options.max_overflow
        self._writer_engine = make_sync_sqlite_engine(
            url,
            options,
            pool_size=1,
            max_overflow=0,
            busy_timeout_s=0.0,
            autocheckpoint=False,
            recycle=False,
            begin_event=False,  # `_write` begins its own: no execution events on the writer
        )
        self._reader_engine = make_sync_sqlite_engine(
            url, options, pool_size=options.pool_size, max_overflow=options.max_overflow
        )
        self._writer: sa.Connection | None = None
        self._busy_timeout_s = options.sqlite_busy_timeout_s
        self._wait_limit_s = options.pool_timeout_s
        # One thread per connection the readers' pool may lend, so a read never waits in the
        # pool while holding a thread.
        self._reads = ThreadPoolExecutor(readers, thread_name_prefix="corral-sqlite-reader")
        self._written = asyncio.Event()
        self._checkpointer: asyncio.Task[None] | None = None
        self._wal = Path(f"{url.database}-wal")

    @classmethod
    async def open(cls, url: sa.URL, options: PoolOptions) -> SqliteRunner:
        """Return a runner with its writer connection made and its checkpointer running.

        The connection is made in a thread: connecting may wait for another process's lock.
        """
        runner = cls(url, options)
        try:
            await asyncio.to_thread(runner._connect_writer)
        except BaseException:
            await runner.aclose()
            raise
        runner._checkpointer = asyncio.create_task(runner._checkpoints())
        return runner

    def _connect_writer(self) -> None:
        # Held for good: checking a connection out of the pool and back (with its reset) for
        # each write cost as much as the write.
        self._writer = self._writer_engine.connect().execution_options(**{WRITE: True})

    def _writer_connection(self) -> sa.Connection:
        if self._writer is None or self._writer.invalidated or self._writer.closed:
            if self._writer is not None:
                self._writer.close()
            self._writer = None
            self._connect_writer()  # SQLite opens a file: no network to wait for
        assert self._writer is not None
        return self._writer

    async def run(self, fn: Callable[[sa.Connection], T], *, write: bool) -> T:
        """Run `fn` in a transaction of its own; the caller must let a read run to its end."""
        if write:
            return await self._write(fn)
        loop = asyncio.get_running_loop()
        queued_at = time.monotonic()
        return await loop.run_in_executor(self._reads, self._read, fn, queued_at)

    async def _write(self, fn: Callable[[sa.Connection], T]) -> T:
        deadline = time.monotonic() + self._busy_timeout_s
        delay = _LOCKED_FIRST_S
        reconnected = False
        while True:
            try:
                conn = self._writer_connection()
                begin_immediate(conn)
                # The statements run on the driver (see _driver.py), in this transaction.
                result = run_on_driver(conn, fn)
                self._written.set()
                return result
            except sa_exc.DBAPIError as exc:
                if exc.connection_invalidated and not reconnected:
                    # The connection is gone (closed under us): nothing of this transaction was
                    # committed, so it runs again, once, on a new one.
                    if self._writer is not None:
                        self._writer.invalidate()
                    reconnected = True
                    continue
                # Another process holds the write lock: wait for it as busy_timeout would, but
                # asleep on the loop, not in SQLite.
                if not is_transient(exc) or time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, _LOCKED_MAX_S)

    def _read(self, fn: Callable[[sa.Connection], T], queued_at: float) -> T:
        # A read waits for a thread (each holds a connection) as it would for a pooled
        # connection: at most `pool_timeout_s`, then it fails as the pool would.
        waited = time.monotonic() - queued_at
        if waited > self._wait_limit_s:
            raise sa_exc.TimeoutError(
                f"no connection came free within {self._wait_limit_s:g} s (waited {waited:.1f} s)"
            )
        with self._reader_engine.begin() as conn:
            return fn(conn)

    async def _checkpoints(self) -> None:
        while True:
            # Woken by a write, then once a second while writes go on: an idle store sleeps.
            await self._written.wait()
            self._written.clear()
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            try:
                size = self._wal.stat().st_size
            except OSError:
                continue  # no WAL file (yet): nothing to copy
            if size < CHECKPOINT_WAL_BYTES:
                continue
            try:
                await self.checkpoint()
            except Exception:  # a failed checkpoint loses nothing: the next one catches up
                logger.warning("SQLite WAL checkpoint failed", exc_info=True)

    async def checkpoint(self) -> None:
        """Copy the WAL into the database now (PASSIVE: it waits for no reader or writer)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._reads, self._checkpoint)

    def _checkpoint(self) -> None:
        with self._reader_engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def pool_statistics(self) -> tuple[int, int, int]:
        """Return connections lent out, kept (the writer's included) and overflowing.

        The writer's connection is held for good and only used inside a write, which runs to
        its end before anything else can look: it is never counted as lent out.
        """
        readers = cast(sa.QueuePool, self._reader_engine.pool)
        return readers.checkedout(), readers.size() + 1, readers.overflow()

    async def aclose(self) -> None:
        """Stop the checkpointer, close every connection and stop the threads."""
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer

        def close() -> None:
            self._reads.shutdown(wait=True)
            if self._writer is not None:
                self._writer.close()
            # The last connection to close checkpoints the WAL into the database.
            self._reader_engine.dispose()
            self._writer_engine.dispose()

        # Joining threads and closing files: not on the event loop.
        await asyncio.to_thread(close)
