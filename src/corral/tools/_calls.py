"""Tool calls as the providers send them, read into corral's own `ToolCall`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from corral._types import Mode
from corral.errors import UsageError
from corral.tools._tool import check_mode

__all__ = ["RawCall", "ToolCall", "parse_calls"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the model asked for.

    `arguments` is a mapping, or the raw JSON text a provider sent (parsed, with a clear error if
    malformed, when the batch runs). `depends_on` names calls of the same batch that must finish
    first; `mode` and `timeout` override the tool's own for this call.
    """

    id: str
    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    mode: Mode | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        depends_on: Any = self.depends_on  # a lone id given as a string is common
        if isinstance(depends_on, str):
            object.__setattr__(self, "depends_on", (depends_on,))
        elif not isinstance(depends_on, tuple):
            object.__setattr__(self, "depends_on", tuple(depends_on))
        check_mode(self.mode, f"mode of call {self.id!r}")

    @classmethod
    def from_openai(cls, data: Mapping[str, Any]) -> ToolCall:
        """Read an OpenAI chat `tool_calls` entry or a Responses API `function_call` item."""
        if data.get("type") == "function_call":  # Responses API
            return cls(_str(data, "call_id"), _str(data, "name"), data.get("arguments") or "{}")
        function = data.get("function")
        if not isinstance(function, Mapping):
            raise UsageError(f"OpenAI tool call {_short(data)} has no 'function' object")
        return cls(
            _str(data, "id"),
            _str(function, "name"),
            function.get("arguments") or "{}",
        )

    @classmethod
    def from_anthropic(cls, data: Mapping[str, Any]) -> ToolCall:
        """Read an Anthropic `tool_use` content block."""
        arguments = data.get("input", {})
        if not isinstance(arguments, Mapping | str):
            raise UsageError(f"Anthropic tool_use block {_short(data)} has a non-object 'input'")
        return cls(_str(data, "id"), _str(data, "name"), arguments)


class RawCall(NamedTuple):
    """A call as the batch reads it: the fields of `ToolCall`, without its checks.

    Internal and cheap to build (a tuple, where a frozen dataclass costs several times more):
    a batch of provider dicts never materialises `ToolCall` objects.
    """

    id: str
    name: str
    arguments: Mapping[str, Any] | str
    depends_on: tuple[str, ...] = ()
    mode: Mode | None = None
    timeout: float | None = None


def parse_calls(tool_calls: Iterable[Any]) -> list[RawCall]:
    """Read every call; accept `ToolCall`s, OpenAI and Anthropic dicts, and SDK objects."""
    if isinstance(tool_calls, str | bytes | Mapping):
        raise UsageError(f"tool_calls must be a list of calls, got a {type(tool_calls).__name__}")
    return [_fast(item) or _one(item, index) for index, item in enumerate(tool_calls)]


def _fast(item: Any) -> RawCall | None:
    """Read a well-formed OpenAI chat or Anthropic dict directly; None sends it the slow way."""
    if type(item) is not dict:
        return None
    call_id = item.get("id")
    function = item.get("function")
    if function.__class__ is dict:
        name, arguments = function.get("name"), function.get("arguments")
        if call_id.__class__ is str and call_id and name.__class__ is str and name:
            if arguments.__class__ is str:
                return RawCall(call_id, name, arguments or "{}")
        return None
    if item.get("type") == "tool_use":
        name, arguments = item.get("name"), item.get("input")
        if call_id.__class__ is str and call_id and name.__class__ is str and name:
            if arguments.__class__ is dict:
                return RawCall(call_id, name, arguments)
    return None


def _one(item: Any, index: int) -> RawCall:
    if isinstance(item, ToolCall):
        return RawCall(item.id, item.name, item.arguments, item.depends_on, item.mode, item.timeout)
    if not isinstance(item, Mapping):
        dump = getattr(item, "model_dump", None)  # openai / anthropic SDK objects
        if dump is None:
            raise UsageError(
                f"tool call #{index} is a {type(item).__name__}; expected a ToolCall, an OpenAI "
                "tool_calls entry or an Anthropic tool_use block"
            )
        item = dump()
    try:
        if item.get("type") == "tool_use":
            call = ToolCall.from_anthropic(item)
        elif "function" in item or item.get("type") in ("function", "function_call"):
            call = ToolCall.from_openai(item)
        else:
            call = None
        if call is not None:
            return RawCall(call.id, call.name, call.arguments)
    except UsageError as exc:
        raise UsageError(f"tool call #{index}: {exc}") from None
    raise UsageError(
        f"tool call #{index} ({_short(item)}) is neither an OpenAI tool call nor an Anthropic "
        "tool_use block"
    )


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise UsageError(f"{_short(data)} has no string {key!r}")
    return value


def _short(data: Mapping[str, Any]) -> str:
    text = repr(dict(data))
    return text if len(text) <= 120 else text[:117] + "..."
