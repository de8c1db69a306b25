"""Shared aliases and protocols."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Literal, Protocol, Self, TypeAlias

__all__ = ["AsyncResource", "Clock", "JSONValue", "Mode", "MonotonicClock", "RegistryMode"]

JSONValue: TypeAlias = "str | int | float | bool | None | list[JSONValue] | dict[str, JSONValue]"

Mode = Literal["async", "thread", "process"]
"""Where one call runs: on the event loop, in the thread pool, or in the process pool."""

RegistryMode = Literal["auto", "async", "thread", "process"]


class Clock(Protocol):
    """A monotonic clock; injected so tests can advance time instead of sleeping."""

    def monotonic(self) -> float:
        """Return seconds on a monotonic scale."""
        ...


class MonotonicClock:
    """The real clock: `time.perf_counter`."""

    __slots__ = ()

    def monotonic(self) -> float:
        """Return `time.perf_counter()`."""
        return time.perf_counter()


class AsyncResource:
    """`async with` for anything with an idempotent `aclose()`: leaving the block closes it.

    `__aenter__` returns the object; override it to open or start something first.
    """

    async def aclose(self) -> None:
        """Release what the object holds. Idempotent."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
