"""`Sessions(on_request_end=...)`: the hook the server persists turns with."""

from __future__ import annotations

import asyncio
import logging

import pytest

from corral.agent import Agent, TerminalEvent, Turn
from corral.errors import RequestCancelled
from corral.providers.scripted import ScriptedProvider
from corral.sessions import Session, Sessions
from corral.testing import Gate


def make(provider: ScriptedProvider, hook) -> Sessions:
    return Sessions(Agent(provider=provider, model="scripted"), on_request_end=hook)


async def test_terminal_event_waits_for_the_hook() -> None:
    gate = Gate()
    seen: list[tuple[str, str, int]] = []

    async def hook(session: Session, turn: Turn) -> None:
        seen.append((session.id, turn.status, len(turn.messages)))
        await gate.passage()

    async with make(ScriptedProvider(["hi there"]), hook) as sessions:
        session = sessions.create(session_id="s1")
        handle = session.send("hello")
        await gate.wait_for(1)
        # The turn is committed to the history, but its end is not visible yet.
        assert [m.role for m in session.history] == ["user", "assistant"]
        assert not any(isinstance(e, TerminalEvent) for e in handle.history)
        waiter = asyncio.create_task(handle.result())
        await asyncio.sleep(0)
        assert not waiter.done()
        gate.open()
        result = await waiter
        assert result.text == "hi there"
        assert isinstance(handle.history[-1], TerminalEvent)
    assert seen == [("s1", "done", 2)]


async def test_hooks_run_in_commit_order_one_at_a_time() -> None:
    order: list[str] = []
    active = 0
    release = {t: asyncio.Event() for t in ("a", "b", "c")}

    async def model(request):
        text = next(m.content for m in reversed(request.messages) if m.role == "user")
        await release[text].wait()
        return text

    async def hook(session: Session, turn: Turn) -> None:
        nonlocal active
        active += 1
        assert active == 1
        await asyncio.sleep(0.01)  # a slow store: the next hook must still wait its turn
        order.append(turn.message.content)
        active -= 1

    async with make(ScriptedProvider(script=model), hook) as sessions:
        session = sessions.create()
        handles = {t: session.send(t) for t in ("a", "b", "c")}
        for text in ("b", "c", "a"):
            release[text].set()
            await asyncio.sleep(0)
        await asyncio.gather(*(h.result() for h in handles.values()))
        committed = [e.message.content for e in session.entries if e.message.role == "user"]
    assert order == committed


async def test_failing_hook_is_logged_and_the_request_still_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def hook(session: Session, turn: Turn) -> None:
        raise RuntimeError("store down")

    async with make(ScriptedProvider(["ok"]), hook) as sessions:
        handle = sessions.create().send("hi")
        with caplog.at_level(logging.ERROR):
            assert (await handle.result()).text == "ok"
    assert "on_request_end failed" in caplog.text


async def test_hook_runs_for_a_request_cancelled_before_it_started() -> None:
    statuses: list[tuple[str, int]] = []

    async def hook(session: Session, turn: Turn) -> None:
        statuses.append((turn.status, len(turn.messages)))

    async with make(ScriptedProvider(["x"]), hook) as sessions:
        handle = sessions.create().send("hi")
        handle.cancel()  # before its task ran
        with pytest.raises(RequestCancelled):
            await handle.result()
    assert statuses == [("cancelled", 0)]


async def test_without_a_hook_nothing_is_held() -> None:
    async with Sessions(Agent(provider=ScriptedProvider(["x"]), model="m")) as sessions:
        handle = sessions.create().send("hi")
        assert (await handle.result()).text == "x"
        assert isinstance(handle.history[-1], TerminalEvent)
