"""The agent loop: call the model, run the tools it asks for in one batch, feed results back."""

from corral.agent._agent import Agent, new_request_id
from corral.agent._events import (
    Answer,
    Cancelled,
    Done,
    Event,
    EventLog,
    EventReader,
    Failed,
    Queued,
    Started,
    StepFinished,
    StepStarted,
    TerminalEvent,
    TextChunk,
    ToolCallFinished,
    ToolCallStarted,
)
from corral.agent._turn import RequestStatus, RunResult, StopReason, Turn

__all__ = [
    "Agent",
    "Answer",
    "Cancelled",
    "Done",
    "Event",
    "EventLog",
    "EventReader",
    "Failed",
    "Queued",
    "RequestStatus",
    "RunResult",
    "Started",
    "StepFinished",
    "StepStarted",
    "StopReason",
    "TerminalEvent",
    "TextChunk",
    "ToolCallFinished",
    "ToolCallStarted",
    "Turn",
    "new_request_id",
]
