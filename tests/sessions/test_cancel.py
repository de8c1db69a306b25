"""Cancelling one request, or all of a session's; what a cancelled turn leaves in the history."""

from __future__ import annotations

import pytest

from corral.agent import Cancelled, TextChunk, ToolCallFinished
from corral.errors import RequestCancelled
from corral.messages import Message
from corral.providers.base import ModelRequest
from corral.providers.scripted import Reply, ScriptedProvider
from corral.testing import Gate
from corral.tools import ToolCall, ToolRegistry
from tests.sessions.helpers import Held, MakeSessions, assert_consistent, turn_of


async def test_cancel_one_request_while_its_siblings_finish(make_sessions: MakeSessions) -> None:
    held = Held()
    sessions = make_sessions(ScriptedProvider(held))
    session = sessions.create()
    a, b, c = (session.send(t) for t in ("a", "b", "c"))
    await held.gate.wait_for(3)
    assert b.cancel()
    assert not b.cancel()  # already cancelled
    held.gate.open()
    assert (await a.result()).text == "echo: a"
    assert (await c.result()).text == "echo: c"
    with pytest.raises(RequestCancelled, match="cancelled by its handle"):
        await b.result()
    assert not a.cancel()  # already done
    assert turn_of(session, b.id) == [Message.user("b"), Message.assistant("", partial=True)]
    last = b.history[-1]
    assert isinstance(last, Cancelled)
    assert (last.reason, last.started) == ("cancelled by its handle", True)
    assert_consistent(session)
    assert sessions.statistics().idle


async def test_a_cancelled_answer_keeps_the_text_that_streamed(
    make_sessions: MakeSessions,
) -> None:
    gate = Gate()
    provider = ScriptedProvider([Reply("The answer is", hold=gate.passage)])
    session = make_sessions(provider).create()
    handle = session.send("what is it?")
    await gate.wait_for(1)
    handle.cancel()
    with pytest.raises(RequestCancelled):
        await handle.result()
    assert session.history == (
        Message.user("what is it?"),
        Message.assistant("The answer is", partial=True),
    )
    assert "".join(e.text for e in handle.history if isinstance(e, TextChunk)) == "The answer is"


async def test_cancel_during_tools_gives_pending_calls_cancelled_results(
    make_sessions: MakeSessions, registry: ToolRegistry
) -> None:
    gate = Gate()

    @registry.tool(read_only=True)
    def quick() -> str:
        return "quick result"

    @registry.tool(read_only=True)
    async def slow() -> str:
        await gate.passage()
        return "never"

    def script(request: ModelRequest) -> Reply:
        return Reply(
            "On it.", [ToolCall("q", "quick"), ToolCall("s1", "slow"), ToolCall("s2", "slow")]
        )

    session = make_sessions(ScriptedProvider(script)).create()
    handle = session.send("do three things")
    async for event in handle:
        if isinstance(event, ToolCallFinished):  # quick is done
            break
    await gate.wait_for(2)  # both slow calls are running
    handle.cancel("changed my mind")
    with pytest.raises(RequestCancelled, match="changed my mind"):
        await handle.result()

    turn = turn_of(session, handle.id)
    assert [m.role for m in turn] == ["user", "assistant", "tool", "tool", "tool", "assistant"]
    assert [c.id for c in turn[1].tool_calls] == ["q", "s1", "s2"]
    assert [(m.tool_call_id, m.status) for m in turn[2:5]] == [
        ("q", "ok"),
        ("s1", "cancelled"),
        ("s2", "cancelled"),
    ]
    assert "changed my mind" in turn[3].content
    assert turn[-1] == Message.assistant("", partial=True)
    assert_consistent(session)
    finished = {e.result.id: e.status for e in handle.history if isinstance(e, ToolCallFinished)}
    assert finished == {"q": "ok", "s1": "cancelled", "s2": "cancelled"}
    assert registry.statistics().idle


async def test_cancel_all_cancels_every_request_of_the_session(make_sessions: MakeSessions) -> None:
    held = Held()
    sessions = make_sessions(ScriptedProvider(held))
    session, other = sessions.create(), sessions.create()
    running = [session.send(f"r{i}") for i in range(4)]
    queued = [session.send(f"q{i}", policy="enqueue") for i in range(3)]
    bystander = other.send("other")
    await held.gate.wait_for(5)
    assert sessions.statistics().queued == 3
    assert sessions.cancel_all(session.id) == 7
    assert sessions.cancel_all(session.id) == 0
    for handle in running + queued:
        with pytest.raises(RequestCancelled):
            await handle.result()
    held.gate.open()
    assert (await bystander.result()).text == "echo: other"
    # The four that had started are recorded; the three that were queued left nothing.
    assert {e.request_id for e in session.entries} == {h.id for h in running}
    assert_consistent(session)
    for handle in queued:
        last = handle.history[-1]
        assert isinstance(last, Cancelled)
        assert not last.started
    assert sessions.statistics().idle


async def test_cancel_a_queued_request_lets_the_rest_run(make_sessions: MakeSessions) -> None:
    held = Held()
    session = make_sessions(ScriptedProvider(held), policy="enqueue").create()
    first, second, third = (session.send(t) for t in ("1", "2", "3"))
    await held.gate.wait_for(1)
    second.cancel()
    held.gate.open()
    assert (await third.result()).text == "echo: 3"
    assert (await first.result()).text == "echo: 1"
    with pytest.raises(RequestCancelled):
        await second.result()
    assert [m.content for m in session.history] == ["1", "echo: 1", "3", "echo: 3"]
    assert held.order == ["1", "3"]


async def test_the_history_after_a_cancel_is_accepted_by_the_next_request(
    make_sessions: MakeSessions, registry: ToolRegistry
) -> None:
    gate = Gate()

    @registry.tool(read_only=True)
    async def slow() -> str:
        await gate.passage()
        return "never"

    def script(request: ModelRequest) -> Reply | str:
        if request.messages[-1].content == "start":
            return Reply("", [ToolCall("", "slow")])
        # A real provider would reject a call without its result: check as it would.
        asked = {c.id for m in request.messages for c in m.tool_calls}
        answered = {m.tool_call_id for m in request.messages if m.role == "tool"}
        assert asked == answered
        return "history is consistent"

    session = make_sessions(ScriptedProvider(script)).create()
    handle = session.send("start")
    await gate.wait_for(1)
    handle.cancel()
    with pytest.raises(RequestCancelled):
        await handle.result()
    assert (await session.send("next").result()).text == "history is consistent"
