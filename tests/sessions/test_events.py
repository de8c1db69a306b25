"""A request's events: numbered, complete for late readers, resumable, shared by many readers."""

from __future__ import annotations

import asyncio
import json

import pytest

from corral.agent import Answer, Done, Event, Started, TextChunk
from corral.errors import UsageError
from corral.providers.scripted import Reply, ScriptedProvider
from corral.testing import Gate
from corral.tools import ToolRegistry
from tests.sessions.helpers import MakeSessions


async def collect(handle: object) -> list[Event]:
    return [e async for e in handle]  # type: ignore[attr-defined]


async def test_late_readers_get_the_whole_sequence(
    make_sessions: MakeSessions, registry: ToolRegistry
) -> None:
    @registry.tool(read_only=True)
    def calculate(expression: str) -> int:
        return 42

    session = make_sessions(ScriptedProvider()).create()
    handle = session.send("calculate 6*7")
    await handle.result()

    first = await collect(handle)
    second = await collect(handle)
    assert first == second == list(handle.history)
    assert [e.seq for e in first] == list(range(1, len(first) + 1))
    assert isinstance(first[0], Started)
    assert isinstance(first[-2], Answer)
    assert isinstance(first[-1], Done)
    assert {e.request_id for e in first} == {handle.id}
    assert [e async for e in handle.events(after=5)] == first[5:]
    assert [e async for e in handle.events(after=len(first))] == []
    with pytest.raises(UsageError, match="after"):
        handle.events(after=-1)
    for event in first:
        assert json.loads(json.dumps(event.to_dict()))["seq"] == event.seq


async def test_readers_joining_at_different_times_see_the_same_events(
    make_sessions: MakeSessions,
) -> None:
    gate = Gate()
    provider = ScriptedProvider([Reply("one two three", hold=gate.passage)])
    session = make_sessions(provider).create()
    handle = session.send("count")
    async with asyncio.TaskGroup() as tg:
        early = tg.create_task(collect(handle))
        await gate.wait_for(1)  # the text has streamed; the answer is held
        assert [e.text for e in handle.history if isinstance(e, TextChunk)] == [
            "one",
            " two",
            " three",
        ]
        middle = tg.create_task(collect(handle))
        gate.open()
    late = await collect(handle)
    assert early.result() == middle.result() == late
    assert isinstance(late[-1], Done)


async def test_a_cancelled_reader_leaves_the_request_and_other_readers_alone(
    make_sessions: MakeSessions,
) -> None:
    gate = Gate()
    session = make_sessions(ScriptedProvider([Reply("held", hold=gate.passage)])).create()
    handle = session.send("hi")
    async with asyncio.TaskGroup() as tg:
        staying = tg.create_task(collect(handle))
        leaving = tg.create_task(collect(handle))
        await gate.wait_for(1)
        leaving.cancel()
        await asyncio.wait([leaving])
        gate.open()
    assert leaving.cancelled()
    assert isinstance(staying.result()[-1], Done)
    assert (await handle.result()).text == "held"
