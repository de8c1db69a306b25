"""The HTTP API's bodies: pydantic models at the edge, shared by the server and `AsyncClient`.

Only pydantic here (no FastAPI), so the client imports them without the server's dependencies.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "AgentOut",
    "AppendIn",
    "CancelOut",
    "CreateSession",
    "ErrorOut",
    "IncrementIn",
    "MemoryOut",
    "MessageOut",
    "Policy",
    "PutIn",
    "RequestOut",
    "SendMessage",
    "SessionOut",
    "ToolOut",
]

Policy = Literal["concurrent", "enqueue", "reject", "interrupt"]
RequestState = Literal["new", "queued", "running", "done", "failed", "cancelled"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateSession(_In):
    """POST /sessions."""

    agent: str | None = Field(default=None, description="The agent's name; the first by default.")
    policy: Policy | None = Field(
        default=None, description="The session's same-session policy; the agent's by default."
    )
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


class SessionOut(_Out):
    """A session."""

    id: str
    agent: str
    policy: Policy
    metadata: dict[str, JsonValue]
    created_at: datetime
    messages: int = Field(description="How many messages its history holds.")
    active_requests: list[str] = Field(
        default_factory=list, description="Requests in flight, oldest first."
    )


class SendMessage(_In):
    """POST /sessions/{id}/messages: a user message, which starts a request."""

    message: str = Field(min_length=1, max_length=200_000)
    policy: Policy | None = Field(
        default=None,
        description="This request's same-session policy; the session's by default. 'reject' "
        "answers 409 with the running request's id when one is in flight.",
    )


class RequestOut(_Out):
    """A request: its state, and its result once done."""

    id: str
    session_id: str
    status: RequestState
    error: str | None = None
    events: int | None = Field(
        default=None, description="Events so far (None: no longer retained in memory)."
    )
    result: dict[str, Any] | None = None
    created: bool = Field(
        default=True, description="False when an idempotent retry attached to an earlier one."
    )


class MessageOut(_Out):
    """One message of a session's history, numbered 1, 2, 3... without gaps."""

    seq: int
    request_id: str | None
    message: dict[str, Any]
    created_at: datetime


class CancelOut(_Out):
    """How many requests a cancel reached."""

    cancelled: int


class AgentOut(_Out):
    """An agent the server serves."""

    name: str
    description: str
    provider: str
    model: str | None
    policy: Policy
    max_steps: int
    tools: list[str]


class ToolOut(_Out):
    """A tool: its schema, and the agents that have it."""

    name: str
    description: str
    parameters: dict[str, Any]
    read_only: bool
    agents: list[str]


class MemoryOut(_Out):
    """A memory record; its `version` is also the response's ETag."""

    scope: str
    key: str
    kind: Literal["json", "text"]
    value: JsonValue
    version: int
    updated_at: datetime
    updated_by: str


class PutIn(_In):
    """PUT /memory/{scope}/{key}: the new value (If-Match: the version it replaces)."""

    value: JsonValue
    kind: Literal["json", "text"] = "json"


class AppendIn(_In):
    """POST /memory/{scope}/{key}/append."""

    item: JsonValue


class IncrementIn(_In):
    """POST /memory/{scope}/{key}/increment."""

    by: int | float = 1


class ErrorOut(_Out):
    """An error: what went wrong, and what a client needs to act on it."""

    detail: Any
    running_request_id: str | None = None
    version: int | None = None
    current: MemoryOut | None = None
