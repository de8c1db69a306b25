"""The lifecycle every store shares: open, closing (calls in flight finish), closed."""

from __future__ import annotations

import asyncio

from corral.executors.base import State, ensure_open

__all__ = ["Lifecycle"]


class Lifecycle:
    """A store's state and its calls in flight; closing waits for those calls to return.

    Calls are never cancelled by `close()`: they belong to their callers, who may cancel them.
    """

    __slots__ = ("_closed", "_idle", "in_flight", "state", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        self.state = State.RUNNING
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = asyncio.Event()

    def enter(self) -> None:
        """Count a call in, or raise `ClosedError` if the store is closing or closed."""
        ensure_open(self.state, self.what)
        self.in_flight += 1
        self._idle.clear()

    def exit(self) -> None:
        """Count a call out."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    def start_close(self) -> bool:
        """Stop taking calls; False if the store is already closing or closed."""
        if self.state in (State.CLOSING, State.CLOSED):
            return False
        self.state = State.CLOSING
        return True

    async def wait_idle(self) -> None:
        """Wait until no call is in flight."""
        await self._idle.wait()

    async def wait_closed(self) -> None:
        """Wait until the closer that got there first has finished."""
        await self._closed.wait()

    def closed(self) -> None:
        """Mark the store closed and release anyone waiting in `wait_closed`."""
        self.state = State.CLOSED
        self._closed.set()
