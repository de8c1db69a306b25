"""The event loop a registry's pools and budgets live on, and the portal for sync callers.

Process workers, budgets and their waiters belong to one event loop. A registry binds to the first
loop that runs a batch. Callers on another loop are proxied to it, and non-async callers
(`execute_sync`) go through a portal: a daemon thread running the registry's own loop, as
anyio's blocking portal does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from corral.errors import UsageError

__all__ = ["Home", "call_in", "proxy"]

T = TypeVar("T")


class Home:
    """Tracks the loop a registry is bound to and owns the portal thread, if any."""

    __slots__ = ("_loop", "_thread")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The bound loop, or None before the first batch."""
        return self._loop

    def foreign(self) -> asyncio.AbstractEventLoop | None:
        """Bind to the running loop if unbound; return the home loop if it is another one."""
        running = asyncio.get_running_loop()
        if self._loop is None or (self._loop.is_closed() and self._thread is None):
            self._loop = running
            return None
        if self._loop is running:
            return None
        if not self._loop.is_running():
            raise UsageError(
                "this registry is bound to another event loop, which is not running; "
                "use one registry per event loop, or `await reg.aclose()` before that loop ends"
            )
        return self._loop

    def for_sync_caller(self) -> asyncio.AbstractEventLoop:
        """Return a running loop in another thread to submit to; start the portal if needed."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise UsageError(
                "execute_sync() was called from a running event loop, which it would block; "
                "use `await reg.execute(...)` there"
            )
        if self._loop is None or (self._loop.is_closed() and self._thread is None):
            self._start_portal()
        assert self._loop is not None
        if not self._loop.is_running():
            raise UsageError(
                "this registry is bound to an event loop that is not running; call execute_sync() "
                "only on a registry that no other loop has used, or while that loop runs"
            )
        return self._loop

    def stop_portal(self) -> None:
        """Stop the portal thread and close its loop, if this registry started one."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        self._thread = None

    @property
    def is_portal(self) -> bool:
        """Whether the home loop is this registry's own portal thread."""
        return self._thread is not None

    def _start_portal(self) -> None:
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()

        self._thread = threading.Thread(target=serve, name="corral-portal", daemon=True)
        self._loop = loop
        self._thread.start()
        started.wait()


async def proxy(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on `loop` (another thread's) and await it; cancellation waits for its end."""
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    wrapped = asyncio.wrap_future(future)
    try:
        return await asyncio.shield(wrapped)
    except asyncio.CancelledError:
        future.cancel()
        try:
            await wrapped
        except (asyncio.CancelledError, Exception):
            pass
        raise


def call_in(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on `loop` from a thread with no running loop, and block for the result."""
    future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise
