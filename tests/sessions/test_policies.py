"""Ten requests in one session under each same-session policy."""

from __future__ import annotations

import asyncio

import pytest

from corral.agent import Cancelled, Queued, Started
from corral.errors import RequestCancelled, SessionBusy
from corral.messages import Message
from corral.providers.base import ModelRequest
from corral.providers.scripted import Reply, ScriptedProvider
from corral.tools import ToolCall, ToolRegistry
from tests.sessions.helpers import (
    Held,
    MakeSessions,
    Switchboard,
    assert_consistent,
    last_user,
    turn_of,
)


async def test_concurrent_requests_all_complete_each_turn_appended_whole_in_completion_order(
    make_sessions: MakeSessions, registry: ToolRegistry
) -> None:
    @registry.tool(read_only=True)
    def note(text: str) -> str:
        return f"noted {text}"

    board = Switchboard()

    async def script(request: ModelRequest) -> Reply | str:
        text = last_user(request)
        if request.messages[-1].role == "user":  # first step: call a tool
            return Reply(f"noting {text}", [ToolCall("", "note", {"text": text})])
        return await board(request)  # second step: wait to be released, then answer

    session = make_sessions(ScriptedProvider(script)).create()
    handles = [session.send(f"m{i}") for i in range(10)]
    await board.arrived.wait_for(10)  # all ten ran their tools and wait at the same time
    # Release them in reverse: each turn lands whole, when its request completes.
    for i in reversed(range(10)):
        board.release(f"m{i}")
        await handles[i].result()

    entries = session.entries
    assert len(entries) == 40  # user, assistant with the call, tool result, answer; x 10
    assert [e.seq for e in entries] == list(range(1, 41))
    assert [e.request_id for e in entries[::4]] == [h.id for h in reversed(handles)]
    for i, handle in enumerate(handles):
        turn = turn_of(session, handle.id)
        assert [m.role for m in turn] == ["user", "assistant", "tool", "assistant"]
        assert turn[0].content == f"m{i}"
        assert turn[2].content == f"noted m{i}"
        assert turn[3].content == f"echo: m{i}"
    texts = [m.content for m in session.history]
    assert all(texts.count(f"m{i}") == 1 for i in range(10))
    assert_consistent(session)
    # Each started from the history as it stood: empty, as none had completed.
    for handle in handles:
        started = next(e for e in handle.history if isinstance(e, Started))
        assert started.history_len == 0


async def test_enqueue_runs_one_at_a_time_in_fifo_order(make_sessions: MakeSessions) -> None:
    held = Held()
    provider = ScriptedProvider(held)
    session = make_sessions(provider, policy="enqueue").create()
    handles = [session.send(f"m{i}") for i in range(10)]
    await held.gate.wait_for(1)
    assert provider.calls == 1
    assert [h.status for h in handles] == ["running"] + ["queued"] * 9
    held.gate.open()
    results = [await h.result() for h in handles]

    assert held.max_active == 1
    assert held.order == [f"m{i}" for i in range(10)]
    assert [r.text for r in results] == [f"echo: m{i}" for i in range(10)]
    # Each saw every turn before it.
    assert [len(r.messages) for r in provider.requests] == [1 + 2 * i for i in range(10)]
    assert [m.content for m in session.history[::2]] == [f"m{i}" for i in range(10)]
    assert_consistent(session)
    queued = [e for e in handles[3].history if isinstance(e, Queued)]
    assert queued[0].waiting_for == tuple(h.id for h in handles[:3])


async def test_reject_raises_session_busy_with_the_running_id(make_sessions: MakeSessions) -> None:
    held = Held()
    sessions = make_sessions(ScriptedProvider(held), policy="reject")
    session = sessions.create()
    first = session.send("m0")
    for i in range(1, 10):
        with pytest.raises(SessionBusy) as caught:
            session.send(f"m{i}")
        assert caught.value.running_request_id == first.id
        assert first.id in str(caught.value)
    assert sessions.statistics().running == 1
    held.gate.open()
    await first.result()
    # Free again the moment the first has ended.
    assert (await session.send("m10").result()).text == "echo: m10"
    assert [m.content for m in session.history] == ["m0", "echo: m0", "m10", "echo: m10"]


async def test_reject_per_request_on_a_concurrent_session(make_sessions: MakeSessions) -> None:
    held = Held()
    session = make_sessions(ScriptedProvider(held)).create()
    a, b = session.send("a"), session.send("b")  # concurrent: both run
    with pytest.raises(SessionBusy) as caught:
        session.send("c", policy="reject")
    assert caught.value.running_request_id == a.id  # the oldest running one
    held.gate.open()
    await a.result()
    await b.result()


async def test_interrupt_cancels_the_running_request_then_starts(
    make_sessions: MakeSessions,
) -> None:
    held = Held()
    provider = ScriptedProvider(held)
    session = make_sessions(provider, policy="interrupt").create()
    handles = []
    for i in range(10):
        handles.append(session.send(f"m{i}"))
        await held.gate.wait_for(i + 1)  # each has started before the next interrupts it
    held.gate.open()
    assert (await handles[-1].result()).text == "echo: m9"
    for i, handle in enumerate(handles[:-1]):
        with pytest.raises(RequestCancelled, match=f"interrupted by request {handles[i + 1].id}"):
            await handle.result()
        last = handle.history[-1]
        assert isinstance(last, Cancelled)
        assert last.started

    # Every interrupted turn is in the history, consistent and marked; the last one answered.
    expected = []
    for i in range(9):
        expected += [Message.user(f"m{i}"), Message.assistant("", partial=True)]
    expected += [Message.user("m9"), Message.assistant("echo: m9")]
    assert list(session.history) == expected
    assert_consistent(session)
    # Each started after the one it interrupted had been recorded.
    assert [len(r.messages) for r in provider.requests] == [1 + 2 * i for i in range(10)]


async def test_interrupt_in_a_burst_cancels_queued_ones_without_a_trace(
    make_sessions: MakeSessions,
) -> None:
    held = Held()
    session = make_sessions(ScriptedProvider(held)).create()
    handles = [session.send(f"m{i}", policy="interrupt") for i in range(10)]
    held.gate.open()
    assert (await handles[-1].result()).text == "echo: m9"
    for handle in handles[:-1]:
        with pytest.raises(RequestCancelled):
            await handle.result()
    # None of the first nine got to start: they leave nothing behind.
    assert [m.content for m in session.history] == ["m9", "echo: m9"]
    assert_consistent(session)
    for handle in handles[:-1]:
        assert [e.kind for e in handle.history] in (["cancelled"], ["queued", "cancelled"])


async def test_enqueue_waits_for_concurrent_requests_sent_before(
    make_sessions: MakeSessions,
) -> None:
    board = Switchboard()
    session = make_sessions(ScriptedProvider(board)).create()
    session.send("a")
    b = session.send("b")
    c = session.send("c", policy="enqueue")
    await board.arrived.wait_for(2)
    assert c.status == "queued"
    board.release("b")
    await b.result()
    await asyncio.sleep(0)
    assert c.status == "queued"  # a is still running
    board.release("c")
    board.release("a")
    await c.result()
    assert [m.content for m in session.history[::2]] == ["b", "a", "c"]
