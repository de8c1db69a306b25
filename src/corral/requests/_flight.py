"""One provider call in the manager: its key, its log, its state, and its terminal events."""

from __future__ import annotations

import asyncio
import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pydantic_core

from corral.providers.base import ModelRequest, ProviderEvent
from corral.requests._broadcast import EventLog
from corral.scheduler import ErrorInfo

__all__ = [
    "Flight",
    "FlightState",
    "StreamCancelled",
    "StreamDone",
    "StreamEvent",
    "StreamFailed",
    "request_key",
]


@dataclass(frozen=True, slots=True)
class StreamDone:
    """The provider stream ended normally."""


@dataclass(frozen=True, slots=True)
class StreamFailed:
    """The request failed: the provider's error, or the janitor's "timed out in queue"."""

    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class StreamCancelled:
    """The subscriber cancelled, or every subscriber left and the call stopped."""

    reason: str


StreamEvent: TypeAlias = ProviderEvent | StreamDone | StreamFailed | StreamCancelled
"""What a subscriber reads: the provider's events, then exactly one terminal event."""

TERMINAL = (StreamDone, StreamFailed, StreamCancelled)


class FlightState(enum.Enum):
    """Where a provider call is."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


@dataclass(eq=False, slots=True)
class Flight:
    """One provider call and everyone subscribed to it."""

    request: ModelRequest
    key: str | None
    enqueued_at: float
    log: EventLog[StreamEvent] = field(default_factory=EventLog)
    state: FlightState = FlightState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    task: asyncio.Task[None] | None = None
    handles: int = 0
    """Subscribers that have not finished or cancelled: the call stops when this drops to 0."""
    emitted: bool = False
    """Whether any provider output reached the log (a broken stream is then not restarted)."""
    completion: Any = None
    """The assembled answer, once someone asked for it: every follower gets the same one."""
    terminal: StreamEvent | None = None
    """Set by whoever stops the call (last subscriber gone, janitor, close): its final event."""
    driven: bool = False
    """Run by its one subscriber's own task (`task`), not by a task of the manager's."""
    inside: bool = False
    """Driven: whether that task is now waiting on the provider (or a stream slot), where a
    stop may cancel it; elsewhere it is running its caller's code, which a stop must not cut."""


def request_key(provider: str, request: ModelRequest) -> str:
    """Return the dedup key: provider, model, messages, tools and sampling parameters."""
    payload: dict[str, Any] = {
        "provider": provider,
        "model": request.model,
        "messages": [
            (
                m.role,
                m.content,
                [(c.id, c.name, c.arguments) for c in m.tool_calls],
                m.tool_call_id,
                m.name,
                m.status,
                m.partial,
            )
            for m in request.messages
        ],
        "tools": [[t.name, t.description, t.parameters] for t in request.tools],
        "temperature": request.temperature,
        "seed": request.seed,
        "max_tokens": request.max_tokens,
        "parallel_tool_calls": request.parallel_tool_calls,
        "extra": request.extra,
    }
    # pydantic-core's serializer: several times faster than json.dumps on a long conversation,
    # and this runs for every request. Key order is the order the request was built in, which is
    # stable for equal requests from the same code; a different order only misses a dedup.
    return hashlib.sha256(pydantic_core.to_json(payload, fallback=str)).hexdigest()


def deterministic(request: ModelRequest) -> bool:
    """Whether two identical requests must get the same answer: temperature 0 or a fixed seed."""
    return request.temperature == 0 or request.seed is not None
