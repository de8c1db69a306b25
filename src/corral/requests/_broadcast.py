"""An append-only event log that any number of subscribers read at their own pace.

One producer appends; each subscriber holds its own cursor (the sequence number it has read up
to), so a late joiner first reads every event from the start and then the live ones, a slow
subscriber never loses an event and never slows the producer or the others, and a subscriber that
reconnects resumes after the last number it saw. Memory is the log itself; the owner drops it once
it is closed, its last subscriber has left and its retention has passed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from corral._wakeup import Wakeup
from corral.errors import UsageError

__all__ = ["EventLog", "LogStatistics"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LogStatistics:
    """Events held, subscribers reading, and whether the log is closed."""

    events: int
    subscribers: int
    closed: bool


class EventLog(Generic[T]):
    """Append-only; events are numbered from 1.

    Args:
        on_last_unsubscribe: Called when the subscriber count drops to zero while the log is
            still open (the owner may then stop the producer: nobody is listening).
    """

    def __init__(self, *, on_last_unsubscribe: Callable[[], None] | None = None) -> None:
        self._events: list[T] = []
        self._closed = False
        self._changed = Wakeup()
        self._subscribers = 0
        self._on_last_unsubscribe = on_last_unsubscribe

    @property
    def closed(self) -> bool:
        """Whether the producer has finished: no event will be added."""
        return self._closed

    @property
    def last_seq(self) -> int:
        """The number of the newest event (0 when empty)."""
        return len(self._events)

    @property
    def subscribers(self) -> int:
        """How many subscribers are reading now."""
        return self._subscribers

    def append(self, event: T) -> int:
        """Add `event` and return its number. Never blocks: slow readers only fall behind."""
        if self._closed:
            raise UsageError("the event log is closed; nothing can be appended")
        self._events.append(event)
        self._changed.wake()
        return len(self._events)

    def close(self) -> None:
        """Mark the log complete: subscribers end after reading what is there. Idempotent."""
        if not self._closed:
            self._closed = True
            self._changed.wake()

    def events(self, after: int = 0) -> list[T]:
        """Return the events numbered after `after`, without waiting."""
        return self._events[after:]

    def poke(self) -> None:
        """Wake every waiting subscriber, so each re-checks its `stop` condition."""
        self._changed.wake()

    async def subscribe(
        self, after: int = 0, *, stop: Callable[[], bool] | None = None
    ) -> AsyncGenerator[tuple[int, T], None]:
        """Yield `(seq, event)` for every event after number `after`, then the live ones.

        Ends when the log is closed and read to its end, or when `stop()` turns true (checked
        whenever the subscriber wakes; `poke()` wakes it). Cancellation-safe: a subscriber that
        stops (cancelled, or its loop broken) only stops itself. The last one to leave an open
        log triggers `on_last_unsubscribe`.
        """
        if after < 0:
            raise UsageError(f"cursor must not be negative, got {after!r}")
        self._subscribers += 1
        try:
            cursor = after
            while True:
                while cursor < len(self._events):
                    if stop is not None and stop():
                        return
                    cursor += 1
                    yield cursor, self._events[cursor - 1]
                if self._closed or (stop is not None and stop()):
                    return
                await self._changed.wait()
        finally:
            self._subscribers -= 1
            if self._subscribers == 0 and not self._closed and self._on_last_unsubscribe:
                self._on_last_unsubscribe()

    def statistics(self) -> LogStatistics:
        """Return the size of the log and its readers."""
        return LogStatistics(len(self._events), self._subscribers, self._closed)

    async def changed(self) -> None:
        """Wait until an event is appended, the log closes, or `poke()` is called."""
        await self._changed.wait()
