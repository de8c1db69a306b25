"""Conversation messages, in one neutral form that every provider translates to its wire format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from corral.errors import UsageError
from corral.scheduler import Status, ToolResult
from corral.tools import ToolCall

__all__ = ["Message", "Role"]

Role = Literal["system", "user", "assistant", "tool"]
_ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation.

    - `assistant` messages may carry `tool_calls`; `partial=True` marks an answer cut short by
      cancellation (kept in the history so it stays truthful, and consistent).
    - `tool` messages answer exactly one call: `tool_call_id`, the tool's `name`, the result text in
      `content`, and `status` ("ok", "error", "timeout", "cancelled", "skipped").
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    status: str | None = None
    partial: bool = False

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise UsageError(f"message role must be one of {', '.join(_ROLES)}, got {self.role!r}")
        if self.role == "tool" and not self.tool_call_id:
            raise UsageError("a tool message needs the tool_call_id it answers")
        if self.tool_calls and self.role != "assistant":
            raise UsageError(f"only assistant messages carry tool calls, not {self.role!r} ones")

    @classmethod
    def system(cls, text: str) -> Message:
        """Return a system message."""
        return cls("system", text)

    @classmethod
    def user(cls, text: str) -> Message:
        """Return a user message."""
        return cls("user", text)

    @classmethod
    def assistant(
        cls, text: str = "", tool_calls: tuple[ToolCall, ...] = (), *, partial: bool = False
    ) -> Message:
        """Return an assistant message, with the tool calls it asked for."""
        return cls("assistant", text, tuple(tool_calls), partial=partial)

    @classmethod
    def tool_result(cls, result: ToolResult) -> Message:
        """Return the tool message answering one call, whatever its outcome."""
        return cls(
            "tool",
            result.content(),
            tool_call_id=result.id,
            name=result.name,
            status=result.status.value,
        )

    @property
    def is_error(self) -> bool:
        """Whether this tool message reports a failed call."""
        return self.role == "tool" and self.status not in (None, Status.OK.value)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able form (for storage and the HTTP API)."""
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            data["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in self.tool_calls
            ]
        for key in ("tool_call_id", "name", "status"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        if self.partial:
            data["partial"] = True
        return data
