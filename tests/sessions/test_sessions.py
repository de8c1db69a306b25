"""Sessions: isolation of histories, directories, context and settings; lifecycle; statistics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.agent import Failed
from corral.errors import ClosedError, ProviderUnavailable, RequestCancelled, UsageError
from corral.messages import Message
from corral.providers.base import ModelRequest
from corral.providers.scripted import Reply, Rule, ScriptedProvider
from corral.tools import ToolContext, ToolRegistry
from tests.sessions.helpers import Held, MakeSessions, assert_consistent, last_user, turn_of


async def test_create_get_delete(make_sessions: MakeSessions) -> None:
    sessions = make_sessions(ScriptedProvider())
    session = sessions.create(session_id="s1", history=[Message.user("earlier")])
    assert sessions.get("s1") is session
    assert "s1" in sessions
    assert len(sessions) == 1
    assert session.entries[0].seq == 1
    assert session.entries[0].request_id is None
    with pytest.raises(UsageError, match="'s1' already exists"):
        sessions.create(session_id="s1")
    with pytest.raises(KeyError, match="nope"):
        sessions.get("nope")
    other = sessions.create()
    assert other.id != session.id
    assert other.id.startswith("ses_")
    with pytest.raises(UsageError, match="policy"):
        sessions.create(policy="sometimes")  # type: ignore[arg-type]

    await sessions.delete("s1")
    assert "s1" not in sessions
    with pytest.raises(ClosedError, match="deleted"):
        session.send("hello")
    with pytest.raises(KeyError):
        await sessions.delete("s1")


async def test_fifty_sessions_at_once_never_cross_histories(make_sessions: MakeSessions) -> None:
    held = Held()
    provider = ScriptedProvider(held)
    sessions = make_sessions(provider)
    all_sessions = [sessions.create(session_id=f"s{i}") for i in range(50)]
    handles = [s.send(f"canary-{s.id}") for s in all_sessions]
    await held.gate.wait_for(50)  # every session's request is in flight at once
    assert sessions.statistics().running == 50
    held.gate.open()
    results = await asyncio.gather(*(h.result() for h in handles))
    assert [r.text for r in results] == [f"echo: canary-{s.id}" for s in all_sessions]

    # A second turn in each, all at once again: each sees its own first turn and nothing else.
    second = [s.send(f"again-{s.id}") for s in all_sessions]
    await asyncio.gather(*(h.result() for h in second))
    for session in all_sessions:
        texts = [m.content for m in session.history]
        assert texts == [
            f"canary-{session.id}",
            f"echo: canary-{session.id}",
            f"again-{session.id}",
            f"echo: again-{session.id}",
        ]
        assert_consistent(session)
    for request in provider.requests:
        own = last_user(request).split("-", 1)[1]
        assert all(own in m.content for m in request.messages), request.messages
    assert sessions.statistics().idle


async def test_each_session_has_its_own_directory_and_tool_context(
    make_sessions: MakeSessions, registry: ToolRegistry, tmp_path: Path
) -> None:
    @registry.tool(read_only=True)
    def read_note(path: Path) -> str:
        return path.read_text()

    @registry.tool(read_only=True)
    def whoami(ctx: ToolContext) -> str:
        return f"{ctx.extras['user']} in {ctx.extras['session_id']} ({ctx.cwd.name})"

    rules = [Rule(r"\bnote\b", "read_note", {"path": "note.txt"}), Rule(r"\bwho\b", "whoami")]
    sessions = make_sessions(ScriptedProvider(rules=rules))
    made = []
    for name in ("alice", "bob"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "note.txt").write_text(f"{name}'s note")
        made.append(
            sessions.create(session_id=name, cwd=tmp_path / name, context={"user": name.title()})
        )
    handles = [s.send("read the note and tell me who I am") for s in made]
    alice, bob = [await h.result() for h in handles]
    assert "- read_note: alice's note" in alice.text
    assert "- whoami: Alice in alice (alice)" in alice.text
    assert "- read_note: bob's note" in bob.text
    assert "- whoami: Bob in bob (bob)" in bob.text


async def test_session_settings_reach_the_model(make_sessions: MakeSessions) -> None:
    provider = ScriptedProvider()
    sessions = make_sessions(provider, system="shared prompt", temperature=0.9)
    custom = sessions.create(model="model-b", temperature=0.1, system="b's prompt", max_steps=2)
    plain = sessions.create()
    await custom.send("one").result()
    await plain.send("two").result()
    first, second = provider.requests
    assert (first.model, first.temperature) == ("model-b", 0.1)
    assert first.messages[0] == Message.system("b's prompt")
    assert custom.agent.max_steps == 2
    assert (second.model, second.temperature) == ("scripted", 0.9)
    assert second.messages[0] == Message.system("shared prompt")


async def test_statistics_count_running_and_queued(make_sessions: MakeSessions) -> None:
    held = Held()
    sessions = make_sessions(ScriptedProvider(held), policy="enqueue")
    session = sessions.create()
    handles = [session.send(f"m{i}") for i in range(3)]
    await held.gate.wait_for(1)
    stats = sessions.statistics()
    assert (stats.sessions, stats.running, stats.queued) == (1, 1, 2)
    assert not stats.idle
    assert [h.status for h in handles] == ["running", "queued", "queued"]
    assert session.requests == tuple(handles)
    held.gate.open()
    for handle in handles:
        await handle.result()
    assert sessions.statistics().idle
    assert session.requests == ()


async def test_a_failed_request_is_recorded_and_raised(make_sessions: MakeSessions) -> None:
    provider = ScriptedProvider(
        [Reply("I was say", error=ProviderUnavailable("502 from upstream"))]
    )
    session = make_sessions(provider).create()
    handle = session.send("hi")
    with pytest.raises(ProviderUnavailable, match="502"):
        await handle.result()
    assert handle.status == "failed"
    last = [e async for e in handle][-1]
    assert isinstance(last, Failed)
    assert last.error.message == "502 from upstream"
    assert session.history == (Message.user("hi"), Message.assistant("I was say", partial=True))


async def test_aclose_cancels_every_request_and_waits(registry: ToolRegistry) -> None:
    from corral.agent import Agent
    from corral.sessions import Sessions

    held = Held()
    async with Sessions(Agent(provider=ScriptedProvider(held), tools=registry)) as sessions:
        a, b = sessions.create(), sessions.create(policy="enqueue")
        handles = [a.send("a1"), a.send("a2"), b.send("b1"), b.send("b2")]
        await held.gate.wait_for(3)  # a1, a2, b1 run; b2 waits for b1
        assert sessions.statistics().queued == 1
    # Leaving the block closed it: every request ended, none runs, nothing is left.
    assert sessions.statistics().idle
    for handle in handles:
        with pytest.raises(RequestCancelled, match="closing"):
            await handle.result()
    assert [h.status for h in handles] == ["cancelled"] * 4
    assert [m.content for m in turn_of(b, handles[3].id)] == []  # cancelled while queued
    for session in (a, b):
        assert_consistent(session)
    with pytest.raises(ClosedError, match="closed"):
        a.send("more")
    with pytest.raises(ClosedError, match="closed"):
        sessions.create()
    await sessions.aclose()  # idempotent


async def test_delete_cancels_only_that_sessions_requests(make_sessions: MakeSessions) -> None:
    held = Held()
    sessions = make_sessions(ScriptedProvider(held))
    doomed, kept = sessions.create(), sessions.create()
    gone, stays = doomed.send("doomed"), kept.send("kept")
    await held.gate.wait_for(2)
    await sessions.delete(doomed.id)
    assert gone.status == "cancelled"
    assert not stays.done()
    held.gate.open()
    assert (await stays.result()).text == "echo: kept"
    with pytest.raises(RequestCancelled, match="deleted"):
        await gone.result()


async def test_send_checks_its_arguments(make_sessions: MakeSessions) -> None:
    session = make_sessions(ScriptedProvider()).create()
    with pytest.raises(UsageError, match="policy"):
        session.send("hi", policy="whenever")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="user message"):
        session.send(Message.assistant("hi"))
    assert session.requests == ()


async def test_a_result_waiter_cancelled_leaves_the_request_running(
    make_sessions: MakeSessions,
) -> None:
    held = Held()
    session = make_sessions(ScriptedProvider(held)).create()
    handle = session.send("hi")
    waiter = asyncio.ensure_future(handle.result())
    await held.gate.wait_for(1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not handle.done()
    held.gate.open()
    assert (await handle.result()).text == "echo: hi"


async def test_the_script_sees_the_session_history(make_sessions: MakeSessions) -> None:
    def script(request: ModelRequest) -> str:
        return f"{len(request.messages)} messages so far"

    session = make_sessions(ScriptedProvider(script)).create(history=[Message.user("before")])
    assert (await session.send("one").result()).text == "2 messages so far"
    assert (await session.send("two").result()).text == "4 messages so far"
