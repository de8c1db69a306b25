"""Scripts that hold the model where a test wants it, and checks of a session's history."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

from corral.messages import Message
from corral.providers.base import ModelRequest
from corral.providers.scripted import Reply
from corral.sessions import Session, Sessions
from corral.testing import Gate


def last_user(request: ModelRequest) -> str:
    return next(m.content for m in reversed(request.messages) if m.role == "user")


class Held:
    """Every model call arrives at `gate` and, once it opens, echoes the user's message."""

    def __init__(self) -> None:
        self.gate = Gate()
        self.active = 0
        self.max_active = 0
        self.order: list[str] = []

    async def __call__(self, request: ModelRequest) -> Reply | str:
        self.order.append(last_user(request))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.gate.passage()
        finally:
            self.active -= 1
        return f"echo: {last_user(request)}"


class Switchboard:
    """Each model call waits for the test to release its user message by name."""

    def __init__(self) -> None:
        self.arrived = Gate()
        self.arrived.open()  # only counts arrivals: `arrived.wait_for(n)`
        self._release: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def release(self, text: str) -> None:
        self._release[text].set()

    async def __call__(self, request: ModelRequest) -> Reply | str:
        text = last_user(request)
        await self.arrived.passage()
        await self._release[text].wait()
        return f"echo: {text}"


def assert_consistent(session: Session) -> None:
    """Gap-free numbers, turns in one piece, every call answered once right after it."""
    entries = session.entries
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    seen: set[str | None] = set()
    previous: str | None = None
    for entry in entries:
        if entry.request_id != previous:
            assert entry.request_id not in seen, f"turn {entry.request_id} is split"
            seen.add(entry.request_id)
            previous = entry.request_id
            if entry.request_id is not None:
                assert entry.message.role == "user"
    messages = [e.message for e in entries]
    answered = [m.tool_call_id for m in messages if m.role == "tool"]
    asked = [c.id for m in messages for c in m.tool_calls]
    assert sorted(answered) == sorted(asked)  # type: ignore[type-var]
    assert len(set(asked)) == len(asked)
    for i, m in enumerate(messages):
        if m.tool_calls:
            following = messages[i + 1 : i + 1 + len(m.tool_calls)]
            assert [x.tool_call_id for x in following] == [c.id for c in m.tool_calls]


def turn_of(session: Session, request_id: str) -> list[Message]:
    return [e.message for e in session.entries if e.request_id == request_id]


MakeSessions = Callable[..., Sessions]
