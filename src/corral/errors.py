"""The exceptions corral raises.

A tool's own failure is never raised: it becomes a `ToolResult` with a status. Exceptions are for
callers' mistakes and for failures of the infrastructure::

    CorralError
    ├── UsageError            bad registration, configuration or arguments; names the bad value
    │   └── ClosedError       the object was used after `aclose()`
    ├── ToolError             raised only where a caller asked for one tool directly
    │   ├── ToolNotFound
    │   ├── ToolArgumentsInvalid
    │   ├── ToolTimeout
    │   └── WorkerDied
    ├── RequestError
    ├── ProviderError
    └── StateError

Inside a batch the `ToolError` subclasses describe a failed call: their type name and message are
what `ToolResult.error` carries.
"""

from __future__ import annotations

__all__ = [
    "ClosedError",
    "CorralError",
    "ProviderError",
    "RequestError",
    "StateError",
    "ToolArgumentsInvalid",
    "ToolError",
    "ToolNotFound",
    "ToolTimeout",
    "UsageError",
    "WorkerDied",
]


class CorralError(Exception):
    """Base class of every exception corral raises."""


class UsageError(CorralError):
    """A registration, configuration or argument is wrong; the message names the bad value."""


class ClosedError(UsageError):
    """An object was used in a state that does not allow it (closing or closed)."""


class ToolError(CorralError):
    """A tool call could not produce a value."""


class ToolNotFound(ToolError):
    """The model asked for a tool that is not registered."""


class ToolArgumentsInvalid(ToolError):
    """The arguments of a call are malformed or fail validation."""


class ToolTimeout(ToolError):
    """A call ran out of time."""


class WorkerDied(ToolError):
    """The worker process running a call exited before it answered."""


class RequestError(CorralError):
    """A request could not be admitted or completed."""


class ProviderError(CorralError):
    """An LLM provider failed."""


class StateError(CorralError):
    """A read or write of versioned state failed."""
