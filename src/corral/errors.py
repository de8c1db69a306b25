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
    │   ├── WorkerDied
    │   └── RemoteToolError   a tool behind HTTP (OpenAPI) or MCP failed
    │       ├── HTTPStatusError(status, retry_after_s)
    │       ├── RemoteConnectError
    │       ├── RemoteTimeout
    │       ├── ServerToolError     an MCP server answered isError
    │       └── OutcomeUnknown      the connection broke mid-call; it may or may not have run
    ├── RequestError
    │   ├── SessionBusy(running_request_id)
    │   ├── RequestCancelled
    │   ├── QueueFull(retry_after_s)
    │   └── RequestExpired
    ├── ProviderError         the LLM provider failed; `retryable` says whether trying again helps
    │   ├── RateLimited(retry_after_s)
    │   ├── ProviderUnavailable   5xx, connection refused or reset, timeouts
    │   ├── ProviderRejected      4xx other than 429: the request itself is wrong
    │   └── StreamBroken          the stream failed after output reached the caller
    └── StateError            a store failed: its database, connection or pool
        ├── NotFound          no such session, request or record
        └── VersionConflict(key, expected, actual, current)
                              a write's version precondition failed; nothing was written

Inside a batch the `ToolError` subclasses describe a failed call: their type name and message are
what `ToolResult.error` carries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.state.base import MemoryRecord

__all__ = [
    "ClosedError",
    "CorralError",
    "HTTPStatusError",
    "NotFound",
    "OutcomeUnknown",
    "ProviderError",
    "ProviderRejected",
    "ProviderUnavailable",
    "QueueFull",
    "RateLimited",
    "RemoteConnectError",
    "RemoteTimeout",
    "RemoteToolError",
    "RequestCancelled",
    "RequestError",
    "RequestExpired",
    "ServerToolError",
    "SessionBusy",
    "StateError",
    "StreamBroken",
    "ToolArgumentsInvalid",
    "ToolError",
    "ToolNotFound",
    "ToolTimeout",
    "UsageError",
    "VersionConflict",
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


class RemoteToolError(ToolError):
    """A tool served over HTTP or MCP failed."""


class HTTPStatusError(RemoteToolError):
    """A service answered with a status outside 2xx.

    `retry_after_s` is the server's `Retry-After` (for 429 and 503), if it sent one.
    """

    def __init__(self, message: str, *, status: int, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class RemoteConnectError(RemoteToolError):
    """The service or server could not be reached (refused, reset, DNS)."""


class RemoteTimeout(RemoteToolError):
    """The service accepted the connection but did not answer in time."""


class ServerToolError(RemoteToolError):
    """An MCP server ran the tool and reported an error (`isError`); the message is its text."""


class OutcomeUnknown(RemoteToolError):
    """The connection broke while a non-idempotent call was in flight: it may or may not have run.

    corral never retries such a call, so it never runs twice.
    """


class RequestError(CorralError):
    """A request could not be admitted or completed."""


class SessionBusy(RequestError):
    """The session runs another request and its policy is `reject`."""

    def __init__(self, message: str, *, running_request_id: str) -> None:
        super().__init__(message)
        self.running_request_id = running_request_id


class RequestCancelled(RequestError):
    """The request was cancelled (by its handle, its session, or an `interrupt`)."""


class QueueFull(RequestError):
    """The admission queue is full; try again after `retry_after_s`."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestExpired(RequestError):
    """The request waited or ran longer than allowed."""


class ProviderError(CorralError):
    """An LLM provider failed."""

    retryable: bool = False


class RateLimited(ProviderError):
    """The provider answered 429; `retry_after_s` is its `Retry-After`, if it sent one."""

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ProviderUnavailable(ProviderError):
    """A 5xx answer, a refused or reset connection, or a timeout: trying again may help."""

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ProviderRejected(ProviderError):
    """The provider refused the request itself (a 4xx other than 429): do not retry."""


class StreamBroken(ProviderError):
    """The stream failed after output had reached the caller; it is not silently restarted."""


class StateError(CorralError):
    """A read or write of versioned state failed."""


class NotFound(StateError, KeyError):
    """No such session, request or record; the message names what was looked for.

    Also a `KeyError`, so code that looks things up like a mapping can catch it as one.
    """

    def __str__(self) -> str:
        # KeyError's str() quotes the message; read it as the sentence it is.
        return str(self.args[0]) if self.args else ""


class VersionConflict(StateError):
    """A write's version precondition failed: the record changed since the writer read it.

    Nothing was written. `expected` is the version the writer based its change on (None: it meant
    to create the record); `actual` is the version stored now (None: the record does not exist);
    `current` is the stored record itself (None when absent), so the writer can re-read and re-plan
    instead of overwriting.
    """

    def __init__(
        self,
        message: str,
        *,
        key: str,
        expected: int | None,
        actual: int | None,
        current: MemoryRecord | None = None,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.expected = expected
        self.actual = actual
        self.current = current
