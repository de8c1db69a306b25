"""corral: an async-native concurrency runtime for LLM agents."""

from corral.agent import (
    Agent,
    Answer,
    Cancelled,
    Done,
    Event,
    Failed,
    Queued,
    RunResult,
    Started,
    StepFinished,
    StepStarted,
    TerminalEvent,
    TextChunk,
    ToolCallFinished,
    ToolCallStarted,
)
from corral.errors import (
    ClosedError,
    CorralError,
    NotFound,
    RequestCancelled,
    SessionBusy,
    StateError,
    ToolArgumentsInvalid,
    ToolError,
    ToolNotFound,
    ToolTimeout,
    UsageError,
    VersionConflict,
    WorkerDied,
)
from corral.messages import Message
from corral.providers.scripted import ScriptedProvider
from corral.requests import RequestManager
from corral.scheduler import ErrorInfo, Plan, Status, ToolResult, ToolResults
from corral.sessions import (
    HistoryEntry,
    RequestHandle,
    Session,
    Sessions,
    SessionsStatistics,
)
from corral.tools import RegistryStatistics, Tool, ToolCall, ToolContext, ToolRegistry, tool

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "Answer",
    "Cancelled",
    "ClosedError",
    "CorralError",
    "Done",
    "ErrorInfo",
    "Event",
    "Failed",
    "HistoryEntry",
    "Message",
    "NotFound",
    "Plan",
    "Queued",
    "RegistryStatistics",
    "RequestCancelled",
    "RequestHandle",
    "RequestManager",
    "RunResult",
    "ScriptedProvider",
    "Session",
    "SessionBusy",
    "Sessions",
    "SessionsStatistics",
    "Started",
    "StateError",
    "Status",
    "StepFinished",
    "StepStarted",
    "TerminalEvent",
    "TextChunk",
    "Tool",
    "ToolArgumentsInvalid",
    "ToolCall",
    "ToolCallFinished",
    "ToolCallStarted",
    "ToolContext",
    "ToolError",
    "ToolNotFound",
    "ToolRegistry",
    "ToolResult",
    "ToolResults",
    "ToolTimeout",
    "UsageError",
    "VersionConflict",
    "WorkerDied",
    "tool",
    "__version__",
]

# Exceptions name themselves `corral.X` in tracebacks, as httpx's do. Not dataclasses: pydantic
# and typing.get_type_hints resolve their deferred annotations in the module `__module__` names.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and issubclass(_obj, BaseException):
        _obj.__module__ = "corral"
del _name, _obj
