"""Shared aliases and protocols."""

from __future__ import annotations

import time
from typing import Literal, Protocol, TypeAlias

__all__ = ["Clock", "JSONValue", "Mode", "MonotonicClock", "RegistryMode"]

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
