"""Concurrency budgets: a cap on calls in flight, shared by every batch that uses it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass
from types import TracebackType

from corral.errors import UsageError

__all__ = ["Budget", "BudgetStatistics"]


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    """A budget's cap, the slots in use and the calls waiting for one."""

    name: str
    limit: int
    in_use: int
    waiting: int


class Budget:
    """A FIFO counting limiter whose cap can change while calls wait.

    Hand-written rather than `asyncio.Semaphore`: the cap must be adjustable at run time
    (`ToolRegistry.set_limit`), waiters are served strictly first come first served, and
    `statistics()` must report waiters for the leak checks. Cancellation-safe: a waiter cancelled
    just as it was granted a slot passes the slot on.
    """

    __slots__ = ("_in_use", "_limit", "_waiters", "name")

    def __init__(self, name: str, limit: int) -> None:
        _check_limit(name, limit)
        self.name = name
        self._limit = limit
        self._in_use = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def limit(self) -> int:
        """The most calls in flight at once."""
        return self._limit

    def set_limit(self, limit: int) -> None:
        """Change the cap; raising it admits waiters at once, lowering it lets calls drain."""
        _check_limit(self.name, limit)
        self._limit = limit
        self._wake()

    async def acquire(self) -> None:
        """Wait for a slot, in arrival order."""
        if self._in_use < self._limit and not self._waiters:
            self._in_use += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as we were cancelled: hand the slot on
            else:
                # `_wake` may already have popped (and skipped) our cancelled future: a release
                # between `task.cancel()` and this task's next step does that.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back."""
        self._in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_use < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_use += 1
                waiter.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def statistics(self) -> BudgetStatistics:
        """Return the cap, slots in use and waiters."""
        return BudgetStatistics(self.name, self._limit, self._in_use, len(self._waiters))


def _check_limit(name: str, limit: int) -> None:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise UsageError(f"limit of budget {name!r} must be a positive integer, got {limit!r}")
