"""Wake every task waiting for a change at once, where each waiter can leave on its own.

The append-only logs (a request's events, a provider stream's broadcast) let readers wait for the
next append. Each waiter awaits a future of its own: a reader that is cancelled cancels only its
own future, never the others' wait, with no `asyncio.shield` (which costs a second future and
two callbacks per wait, and was twice the cost of the wait itself). `asyncio.Event` does the same
per waiter, but set-then-clear to wake, and its waiters leave a deque by `remove()`, O(n) each:
quadratic when a thousand readers follow one stream.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["Wakeup"]


class Wakeup:
    """Waiters and the one call that wakes them all."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[bool]] = []

    @property
    def waiting(self) -> int:
        """How many waiters are registered (a cancelled one counts until the next wake)."""
        return len(self._waiters)

    async def wait(self) -> None:
        """Return at the next `wake()`."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        await future

    async def wait_for(self, timeout_s: float) -> bool:
        """Return whether a `wake()` came within `timeout_s` (False: the time ran out).

        One timer handle, not `asyncio.timeout`'s machinery: a stream's reader waits this way
        for every event it forwards, and the context manager cost more than the wait itself.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(future)
        timer = loop.call_later(timeout_s, _time_out, future)
        try:
            woken = await future
        finally:
            timer.cancel()
        if not woken:
            # Not left for the next wake to drop: a quiet log may see many time-outs first.
            # (A wake that came between the time-out and this line has dropped it already.)
            with contextlib.suppress(ValueError):
                self._waiters.remove(future)
        return woken

    def wake(self) -> None:
        """Wake every task waiting now; later waiters wait for the next wake."""
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(True)


def _time_out(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)
