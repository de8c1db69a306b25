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

__all__ = ["Wakeup"]


class Wakeup:
    """Waiters and the one call that wakes them all."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def waiting(self) -> int:
        """How many waiters are registered (a cancelled one counts until the next wake)."""
        return len(self._waiters)

    async def wait(self) -> None:
        """Return at the next `wake()`."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        await future

    def wake(self) -> None:
        """Wake every task waiting now; later waiters wait for the next wake."""
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)
