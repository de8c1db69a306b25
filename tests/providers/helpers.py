"""Shared pieces of the provider tests: requests, draining streams, a stub provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from corral.messages import Message
from corral.providers import (
    Finish,
    ModelCapabilities,
    ModelRequest,
    ProviderEvent,
    TextDelta,
    ToolCallDone,
    ToolSpec,
    Usage,
)

ADD = ToolSpec(
    "add",
    "Add two numbers.",
    {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
)


def request(text: str = "hi", *, model: str = "gpt-4o", **fields: Any) -> ModelRequest:
    """A one-turn request with a system prompt."""
    messages = (Message.system("Be brief."), Message.user(text))
    return ModelRequest(model, messages, **fields)


async def drain(stream: AsyncIterator[ProviderEvent]) -> list[ProviderEvent]:
    """Every event of a stream."""
    return [event async for event in stream]


def text_of(events: Sequence[ProviderEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def calls_of(events: Sequence[ProviderEvent]) -> list[tuple[str, str, Any]]:
    """(id, name, arguments text) of every ToolCallDone."""
    return [
        (e.call.id, e.call.name, e.call.arguments) for e in events if isinstance(e, ToolCallDone)
    ]


async def drain_into(stream: AsyncIterator[ProviderEvent], seen: list[ProviderEvent]) -> None:
    """Append every event to `seen`, so a test still has them when the stream raises."""
    async for event in stream:
        seen.append(event)  # noqa: PERF401 (a comprehension would lose them on the error)


async def settle() -> None:
    """Let every ready task run for a while: a call the limiter should hold back would start."""
    for _ in range(30):
        await asyncio.sleep(0)


Step = ProviderEvent | BaseException | Callable[[], Awaitable[object]]


class StubProvider:
    """A provider that plays one script per call: events to yield, errors to raise, waits.

    A script is a list of steps: an event is yielded, an exception raised, a zero-argument
    coroutine function awaited (to hold the call at a gate). With no scripts left it answers
    "ok" with usage (10, 5).
    """

    name = "stub"

    def __init__(self, *scripts: Sequence[Step]) -> None:
        self.scripts = list(scripts)
        self.calls = 0
        self.seen: list[str] = []
        self.open = 0
        self.max_open = 0
        self.closed = False

    def capabilities(self, model: str) -> ModelCapabilities:
        return ModelCapabilities()

    async def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        self.calls += 1
        self.seen.append(request.messages[-1].content)
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        script = self.scripts.pop(0) if self.scripts else OK
        try:
            for step in script:
                if isinstance(step, BaseException):
                    raise step
                if callable(step):
                    await step()
                else:
                    yield step
        finally:
            self.open -= 1

    async def aclose(self) -> None:
        self.closed = True


OK: tuple[Step, ...] = (TextDelta("ok"), Usage(10, 5), Finish("stop"))
