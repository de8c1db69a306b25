"""Public helpers for testing concurrent code: gates and an interval recorder."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from corral.providers.scripted import ScriptedProvider

__all__ = ["Gate", "Interval", "ManualClock", "Recorder", "ScriptedProvider"]


class Gate:
    """An `asyncio.Event` that counts arrivals: tests open it to release everyone waiting.

    `await gate.wait_for(n)` returns once `n` tasks are blocked in `gate.passage()`, so a test
    can prove that n calls were in flight at the same time without sleeping.
    """

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._arrived = 0
        self._changed = asyncio.Condition()

    @property
    def arrived(self) -> int:
        """How many tasks have reached the gate."""
        return self._arrived

    async def passage(self) -> None:
        """Arrive and wait until the gate opens."""
        async with self._changed:
            self._arrived += 1
            self._changed.notify_all()
        await self._open.wait()

    async def wait_for(self, count: int) -> None:
        """Wait until `count` tasks have arrived."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._arrived >= count)

    def open(self) -> None:
        """Release every waiter, present and future."""
        self._open.set()


@dataclass(frozen=True, slots=True)
class Interval:
    """When one piece of work ran, on the `time.perf_counter` scale."""

    key: str
    start: float
    end: float

    def overlaps(self, other: Interval) -> bool:
        """Whether the two ran at the same time for any instant."""
        return self.start < other.end and other.start < self.end


class Recorder:
    """Record intervals from any thread; tests then check which overlapped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._intervals: list[Interval] = []
        self._active = 0
        self.max_active = 0

    @contextmanager
    def span(self, key: str) -> Iterator[None]:
        """Record the time spent inside the block under `key`."""
        with self._lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        start = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            with self._lock:
                self._active -= 1
                self._intervals.append(Interval(key, start, end))

    @property
    def intervals(self) -> list[Interval]:
        """The recorded intervals, in order of completion."""
        with self._lock:
            return list(self._intervals)

    def get(self, key: str) -> Interval:
        """Return the interval recorded under `key`."""
        for interval in self.intervals:
            if interval.key == key:
                return interval
        raise KeyError(key)


class ManualClock:
    """A clock that moves only when a test says so; `sleep` waits for the test to advance it.

    Pass it where corral takes a `Clock` (and its `sleep` where it takes one) to test timeouts,
    janitors and rate limits without real waiting.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        """Return the current manual time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose time has come."""
        if seconds < 0:
            raise ValueError(f"time only moves forward, not by {seconds!r}")
        self._now += seconds
        waiting = []
        for when, future in self._sleepers:
            if when <= self._now:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((when, future))
        self._sleepers = waiting

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by `seconds`."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + seconds, future))
        await future

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping on this clock."""
        return sum(1 for _, f in self._sleepers if not f.done())
