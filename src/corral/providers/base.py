"""The provider interface: one streaming call to a model, and the events it yields."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

from corral._json import dumps
from corral.messages import Message
from corral.tools import Tool, ToolCall

__all__ = [
    "Completion",
    "Finish",
    "ModelCapabilities",
    "ModelRequest",
    "Provider",
    "ProviderEvent",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallDone",
    "ToolSpec",
    "Usage",
    "complete",
]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as a model sees it: name, description and JSON schema of its arguments."""

    name: str
    description: str
    parameters: Mapping[str, Any]

    @classmethod
    def of(cls, tool: Tool) -> ToolSpec:
        """Describe a registered tool."""
        return cls(tool.name, tool.description, tool.parameters)


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """Everything one model call needs; providers translate it to their wire format."""

    model: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    temperature: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    parallel_tool_calls: bool | None = None
    """None: the provider's default. Never sent to models that reject it (see capabilities)."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Provider-specific request fields, passed through as they are."""

    def estimated_tokens(self) -> int:
        """Estimate the prompt's tokens (4 characters a token) plus the answer's budget.

        Rate limiters debit this before the call and correct it from the reported usage after.
        """
        chars = sum(len(m.content) for m in self.messages)
        # UTF-8 bytes of the JSON: as good a measure for an estimate, and cheaper to get.
        chars += sum(len(dumps(c.arguments)) for m in self.messages for c in m.tool_calls)
        chars += sum(len(t.description) + len(dumps(t.parameters)) for t in self.tools)
        return chars // 4 + 1 + (self.max_tokens or 0)


@dataclass(frozen=True, slots=True)
class ModelCapabilities:
    """What a model accepts.

    Reasoning models reject `parallel_tool_calls`; some models do not stream tool calls.
    """

    parallel_tool_calls: bool = True
    streams_tool_calls: bool = True


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer's text."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call as it streams: the call at `index` gets more argument text."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCallDone:
    """A tool call, assembled from its deltas; `arguments` is the raw JSON text the model sent."""

    call: ToolCall


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens the provider reports for the call."""

    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        """Input and output tokens together."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Finish:
    """The stream ended normally; `reason` is "stop", "tool_calls", "length" or the provider's."""

    reason: str


ProviderEvent: TypeAlias = TextDelta | ToolCallDelta | ToolCallDone | Usage | Finish


class Provider(Protocol):
    """A model service: `stream` is the one method; everything else is built on it."""

    @property
    def name(self) -> str:
        """A short name for logs, metrics and dedup keys ("openai", "anthropic", ...)."""
        ...

    def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        """Call the model and yield its events; the last one is `Finish`.

        Raises:
            ProviderError: RateLimited, ProviderUnavailable, ProviderRejected, StreamBroken.
        """
        ...

    def capabilities(self, model: str) -> ModelCapabilities:
        """Return what `model` accepts."""
        ...

    async def aclose(self) -> None:
        """Release connections. Idempotent."""
        ...


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole answer: its text, the tool calls it asked for, usage and finish reason."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    usage: Usage | None
    finish_reason: str


async def complete(provider: Provider, request: ModelRequest) -> Completion:
    """Run `provider.stream(request)` to the end and return the assembled answer."""
    text: list[str] = []
    calls: list[ToolCall] = []
    usage: Usage | None = None
    reason = "stop"
    async for event in provider.stream(request):
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, ToolCallDone):
            calls.append(event.call)
        elif isinstance(event, Usage):
            usage = event
        elif isinstance(event, Finish):
            reason = event.reason
    return Completion("".join(text), tuple(calls), usage, reason)


def specs(tools: Sequence[Tool]) -> tuple[ToolSpec, ...]:
    """Describe registered tools for a request."""
    return tuple(ToolSpec.of(t) for t in tools)
