"""What a request reports as it runs: numbered events, and the log late readers replay.

Every event carries `seq` (1, 2, 3... within its request) and `request_id`. A request's events
form one log; readers each keep their own place in it, so a late reader gets the whole stream from
the first event, and a reader that lost its connection resumes after the last `seq` it saw. The
last event is always exactly one terminal event: `Done`, `Failed` or `Cancelled`.

Order within one request::

    Queued?  Started
    (StepStarted  TextChunk*  [ToolCallStarted+  ToolCallFinished+]  StepFinished)*
    Answer?  Done | Failed | Cancelled

Every `ToolCallStarted` is matched by one `ToolCallFinished` with the call's status, even when the
request is cancelled or fails while the call runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from corral._wakeup import Wakeup
from corral.errors import UsageError
from corral.messages import Message
from corral.providers.base import Usage
from corral.scheduler import ErrorInfo, ToolResult
from corral.tools import ToolCall

if TYPE_CHECKING:
    from corral.agent._turn import RunResult

__all__ = [
    "Answer",
    "Cancelled",
    "Done",
    "Event",
    "EventLog",
    "EventReader",
    "Failed",
    "Queued",
    "Started",
    "StepFinished",
    "StepStarted",
    "TerminalEvent",
    "TextChunk",
    "ToolCallFinished",
    "ToolCallStarted",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event: its number within the request, and the request's id."""

    kind: ClassVar[str] = "event"
    """A short name for the wire (an SSE `event:` field, a JSON `type`)."""

    seq: int
    request_id: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able form: `type`, `seq`, `request_id` and the event's own fields."""
        data: dict[str, Any] = {"type": self.kind}
        for name in _field_names(type(self)):
            data[name] = _jsonable(getattr(self, name))
        return data


@dataclass(frozen=True, slots=True)
class TerminalEvent(Event):
    """The last event of a request: `Done`, `Failed` or `Cancelled`."""


@dataclass(frozen=True, slots=True)
class Queued(Event):
    """The request waits for earlier requests of its session (policy `enqueue` or `interrupt`)."""

    kind: ClassVar[str] = "queued"
    waiting_for: tuple[str, ...]
    """Ids of the requests it waits for."""


@dataclass(frozen=True, slots=True)
class Started(Event):
    """The request started; it sees the `history_len` messages of the history at this moment."""

    kind: ClassVar[str] = "started"
    history_len: int


@dataclass(frozen=True, slots=True)
class StepStarted(Event):
    """A step begins: one call to the model (numbered from 1), then the tools it asked for."""

    kind: ClassVar[str] = "step_started"
    step: int


@dataclass(frozen=True, slots=True)
class TextChunk(Event):
    """A piece of the model's text, as it streams."""

    kind: ClassVar[str] = "text"
    step: int
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStarted(Event):
    """A tool call the model asked for was handed to the scheduler."""

    kind: ClassVar[str] = "tool_call_started"
    step: int
    call: ToolCall


@dataclass(frozen=True, slots=True)
class ToolCallFinished(Event):
    """A tool call ended; `result.status` says how (ok, error, timeout, cancelled, skipped)."""

    kind: ClassVar[str] = "tool_call_finished"
    step: int
    result: ToolResult

    @property
    def status(self) -> str:
        """How the call ended."""
        return self.result.status.value


@dataclass(frozen=True, slots=True)
class StepFinished(Event):
    """A step ended: why the model stopped, the tokens it used, and how many calls it made."""

    kind: ClassVar[str] = "step_finished"
    step: int
    finish_reason: str
    usage: Usage | None
    tool_calls: int


@dataclass(frozen=True, slots=True)
class Answer(Event):
    """The model's final message: it answered without asking for tools."""

    kind: ClassVar[str] = "answer"
    message: Message


@dataclass(frozen=True, slots=True)
class Done(TerminalEvent):
    """The request finished; `result.stop_reason` is "answer" or "max_steps"."""

    kind: ClassVar[str] = "done"
    result: RunResult

    @property
    def stop_reason(self) -> str:
        """Why it stopped: "answer", or "max_steps" (the model kept calling tools)."""
        return self.result.stop_reason


@dataclass(frozen=True, slots=True)
class Failed(TerminalEvent):
    """The request failed (the provider, or the infrastructure); `error` says why."""

    kind: ClassVar[str] = "error"
    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class Cancelled(TerminalEvent):
    """The request was cancelled: by its handle, its session, an `interrupt`, or shutdown."""

    kind: ClassVar[str] = "cancelled"
    reason: str
    started: bool
    """Whether it had started; a request cancelled while queued left no trace in the history."""


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _jsonable(value: Any) -> Any:
    if type(value) in _PLAIN:  # most fields: no need to try every richer type first
        return value
    if isinstance(value, Message):
        return value.to_dict()
    if isinstance(value, ToolCall):
        return {"id": value.id, "name": value.name, "arguments": value.arguments}
    if isinstance(value, ToolResult):
        return {
            "id": value.id,
            "name": value.name,
            "status": value.status.value,
            "content": value.content(),
        }
    if isinstance(value, ErrorInfo):
        return {"type": value.type, "message": value.message}
    if isinstance(value, Usage):
        return {"input_tokens": value.input_tokens, "output_tokens": value.output_tokens}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return value


class EventLog:
    """The append-only log of one request's events; any number of readers, each at its own pace.

    One writer appends (synchronously: appending never waits for readers). Readers iterate with
    `read(after=n)`: they get every event numbered above `n`, then the live ones, and stop after
    the terminal event. Late joiners get the whole stream; slow readers lose nothing.
    """

    __slots__ = ("_changed", "_closed", "_events")

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._closed = False
        self._changed = Wakeup()  # readers waiting for the next append

    @property
    def next_seq(self) -> int:
        """The number the next event must carry."""
        return len(self._events) + 1

    @property
    def closed(self) -> bool:
        """Whether the terminal event is in: nothing more will be appended."""
        return self._closed

    def __len__(self) -> int:
        return len(self._events)

    def snapshot(self) -> tuple[Event, ...]:
        """Return the events so far."""
        return tuple(self._events)

    def append(self, event: Event) -> None:
        """Add `event`, numbered `next_seq`; a terminal event closes the log."""
        if self._closed:
            raise UsageError(f"the log of request {event.request_id!r} is closed")
        if event.seq != len(self._events) + 1:
            raise UsageError(f"event numbered {event.seq}, expected {len(self._events) + 1}")
        self._events.append(event)
        if isinstance(event, TerminalEvent):
            self._closed = True
        self._changed.wake()

    def read(self, *, after: int = 0) -> EventReader:
        """Return an iterator over every event numbered above `after`, then the live ones.

        It ends after the terminal event. Cancellation-safe: cancelling a reader affects neither
        the writer nor other readers. (A plain iterator, not an async generator: a reader left
        half-way needs no clean-up task from the event loop.)
        """
        if not isinstance(after, int) or after < 0:
            raise UsageError(f"after must be a sequence number >= 0, got {after!r}")
        return EventReader(self, after)


class EventReader:
    """A reader of an `EventLog`, from `EventLog.read`: an async iterator of its events.

    Besides: `take_ready` takes what is there without waiting, `next_within` waits with a
    time limit (one timer, no `asyncio.timeout` per event).
    """

    __slots__ = ("_index", "_log")

    def __init__(self, log: EventLog, after: int) -> None:
        self._log = log
        self._index = after

    def __aiter__(self) -> EventReader:
        return self

    def take_ready(self) -> list[Event]:
        """Return the events already in the log past this reader, without waiting."""
        events = self._log._events
        ready = events[self._index :]
        self._index = len(events)
        return ready

    async def __anext__(self) -> Event:
        log = self._log
        while self._index >= len(log._events):
            if log._closed:
                raise StopAsyncIteration
            await log._changed.wait()
        event = log._events[self._index]
        self._index += 1
        return event

    async def next_within(self, timeout_s: float) -> Event | None:
        """Return the next event, or None if none came within `timeout_s`.

        Raises:
            StopAsyncIteration: the log is closed and this reader has had every event.
        """
        log = self._log
        while self._index >= len(log._events):
            if log._closed:
                raise StopAsyncIteration
            if not await log._changed.wait_for(timeout_s):
                return None
        event = log._events[self._index]
        self._index += 1
        return event
