"""The agent loop and the scripted provider: steps, parallel tools, one result per call id."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import corral
from corral.agent import (
    Agent,
    Answer,
    Cancelled,
    Done,
    Event,
    Failed,
    Started,
    StepFinished,
    TextChunk,
    ToolCallFinished,
    ToolCallStarted,
    Turn,
)
from corral.errors import ProviderUnavailable, StreamBroken, UsageError
from corral.messages import Message
from corral.providers.base import (
    Finish,
    ModelCapabilities,
    ModelRequest,
    ProviderEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallDone,
    Usage,
    complete,
)
from corral.providers.scripted import DEMO_RULES, Reply, Rule, ScriptedProvider
from corral.testing import Gate
from corral.tools import ToolCall, ToolRegistry


def tool_messages(messages: tuple[Message, ...] | list[Message]) -> dict[str, Message]:
    return {m.tool_call_id: m for m in messages if m.role == "tool" and m.tool_call_id}


def assert_every_call_answered_once(messages: tuple[Message, ...] | list[Message]) -> None:
    """Each assistant call id is answered by exactly one tool message, right after its call."""
    asked = [c.id for m in messages if m.role == "assistant" for c in m.tool_calls]
    answered = [m.tool_call_id for m in messages if m.role == "tool"]
    assert sorted(asked) == sorted(answered)  # type: ignore[type-var]
    assert len(set(asked)) == len(asked)
    for i, m in enumerate(messages):
        if m.tool_calls:
            following = [x.tool_call_id for x in messages[i + 1 : i + 1 + len(m.tool_calls)]]
            assert following == [c.id for c in m.tool_calls]


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


# -- the agent loop ----------------------------------------------------------------------------


async def test_two_calls_of_one_message_overlap_then_the_results_feed_the_answer(
    registry: ToolRegistry,
) -> None:
    gate = Gate()

    @registry.tool(read_only=True)
    async def lookup(key: str) -> str:
        await gate.passage()
        return f"value-{key}"

    def script(request: ModelRequest) -> Reply | str:
        results = [m for m in request.messages if m.role == "tool"]
        if not results:
            calls = [ToolCall("a", "lookup", {"key": "x"}), ToolCall("b", "lookup", {"key": "y"})]
            return Reply("Looking both up.", calls)
        return " and ".join(m.content for m in results)

    provider = ScriptedProvider(script)
    agent = Agent(provider=provider, tools=registry, system="be brief", model="m")
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(agent.run("what are x and y?"))
        await gate.wait_for(2)  # both calls are inside the tool at once: they overlap
        gate.open()
    result = run.result()

    assert result.text == "value-x and value-y"
    assert result.stop_reason == "answer"
    assert result.steps == 2
    assert [m.role for m in result.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert [c.id for c in result.messages[1].tool_calls] == ["a", "b"]
    assert_every_call_answered_once(result.messages)
    assert result.message == result.messages[-1]
    # The second model call saw the system prompt, the calls and both results.
    assert provider.calls == 2
    second = provider.requests[1]
    assert second.messages[0] == Message.system("be brief")
    assert [m.tool_call_id for m in second.messages if m.role == "tool"] == ["a", "b"]
    assert [t.name for t in second.tools] == ["lookup"]
    assert second.model == "m"
    assert result.usage.total_tokens > 0


async def test_every_call_gets_exactly_one_tool_message_whatever_happens(
    registry: ToolRegistry,
) -> None:
    @registry.tool(read_only=True)
    def fine() -> str:
        return "fine"

    @registry.tool(read_only=True)
    def broken() -> str:
        raise RuntimeError("boom")

    @registry.tool(read_only=True, timeout=0.05)
    async def hangs() -> None:
        await asyncio.Event().wait()

    calls = [
        ToolCall("c1", "fine"),
        ToolCall("c2", "broken"),
        ToolCall("c3", "hangs"),
        ToolCall("c4", "no_such_tool"),
        ToolCall("c5", "fine", '{"not json'),
        ToolCall("dup", "fine"),
        ToolCall("dup", "fine"),  # the model reused an id: the agent gives it one of its own
    ]
    provider = ScriptedProvider([Reply("", calls), "done"])
    result = await Agent(provider=provider, tools=registry).run("go")

    assert_every_call_answered_once(result.messages)
    answers = tool_messages(result.messages)
    assert len(answers) == 7
    assert answers["c1"].status == "ok"
    assert answers["c2"].status == "error"
    assert "boom" in answers["c2"].content
    assert answers["c3"].status == "timeout"
    assert answers["c4"].status == "error"
    assert "not registered" in answers["c4"].content
    assert answers["c5"].status == "error"
    assert "JSON" in answers["c5"].content
    assert answers["dup"].status == "ok"
    assert answers["dup_1_6"].status == "ok"
    assert result.text == "done"


async def test_cancelling_a_turn_mid_batch_keeps_finished_results_and_cancels_the_rest(
    registry: ToolRegistry,
) -> None:
    gate = Gate()

    @registry.tool(read_only=True)
    def quick() -> str:
        return "quick"

    @registry.tool(read_only=True)
    async def slow() -> str:
        await gate.passage()
        return "slow"

    provider = ScriptedProvider(
        [Reply("Working.", [ToolCall("q", "quick"), ToolCall("s", "slow")])]
    )
    agent = Agent(provider=provider, tools=registry)
    turn = Turn("go", request_id="r1")
    seen: list[Event] = []
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(agent.run_turn(turn))
        async for event in turn.log.read():
            seen.append(event)
            if isinstance(event, ToolCallFinished) and event.result.id == "q":
                break
        await gate.wait_for(1)
        turn.cancel_reason = "the test cancelled it"
        task.cancel()
    assert task.cancelled()

    assert turn.status == "cancelled"
    assert_every_call_answered_once(turn.messages)
    answers = tool_messages(turn.messages)
    assert answers["q"].status == "ok"
    assert answers["s"].status == "cancelled"
    assert "the test cancelled it" in answers["s"].content
    assert turn.messages[-1] == Message.assistant("", partial=True)
    events = list(turn.log.snapshot())
    finished = [e.result.id for e in events if isinstance(e, ToolCallFinished)]
    assert sorted(finished) == ["q", "s"]  # every started call is reported finished
    last = events[-1]
    assert isinstance(last, Cancelled)
    assert last.reason == "the test cancelled it"
    assert last.started


async def test_max_steps_stops_a_model_that_keeps_calling_tools(registry: ToolRegistry) -> None:
    @registry.tool(read_only=True)
    def again() -> str:
        return "again"

    provider = ScriptedProvider(lambda request: Reply("more", [ToolCall("", "again")]))
    agent = Agent(provider=provider, tools=registry, max_steps=3)
    events = [e async for e in agent.stream("loop forever")]

    assert provider.calls == 3
    done = events[-1]
    assert isinstance(done, Done)
    assert done.stop_reason == done.result.stop_reason == "max_steps"
    assert done.result.steps == 3
    assert done.result.message is None
    assert done.result.text == "more"
    messages = done.result.messages
    assert messages[-1].role == "tool"  # every call of the last step was answered too
    assert_every_call_answered_once(messages)
    assert not any(isinstance(e, Answer) for e in events)


async def test_a_stream_that_breaks_fails_the_turn_and_marks_the_partial_answer() -> None:
    provider = ScriptedProvider([Reply("Half an ans", error=StreamBroken("connection reset"))])
    agent = Agent(provider=provider)
    with pytest.raises(StreamBroken, match="connection reset"):
        await agent.run("hi")

    turn = Turn("hi", request_id="r2")
    provider = ScriptedProvider([Reply("Half an ans", error=ProviderUnavailable("503"))])
    with pytest.raises(ProviderUnavailable):
        await Agent(provider=provider).run_turn(turn)
    assert turn.status == "failed"
    assert turn.messages == [Message.user("hi"), Message.assistant("Half an ans", partial=True)]
    last = turn.log.snapshot()[-1]
    assert isinstance(last, Failed)
    assert last.error.type == "ProviderUnavailable"


async def test_stream_events_are_numbered_and_balanced(registry: ToolRegistry) -> None:
    @registry.tool(read_only=True)
    def add(a: int, b: int) -> int:
        return a + b

    rules = [Rule(r"add (?P<a>\d+) and (?P<b>\d+)", "add", lambda m: {"a": m["a"], "b": m["b"]})]
    agent = Agent(provider=ScriptedProvider(rules=rules), tools=registry)
    async with contextlib.aclosing(agent.stream("add 2 and 3, add 4 and 5")) as stream:
        events = [e async for e in stream]

    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len({e.request_id for e in events}) == 1
    assert isinstance(events[0], Started)
    assert isinstance(events[-1], Done)
    assert kinds(events).count("step_started") == kinds(events).count("step_finished") == 2
    started = [e.call.id for e in events if isinstance(e, ToolCallStarted)]
    finished = [e.result.id for e in events if isinstance(e, ToolCallFinished)]
    assert len(started) == 2
    assert sorted(started) == sorted(finished)
    steps = [e for e in events if isinstance(e, StepFinished)]
    assert [s.finish_reason for s in steps] == ["tool_calls", "stop"]
    assert steps[0].tool_calls == 2
    text = "".join(e.text for e in events if isinstance(e, TextChunk) and e.step == 2)
    assert text == events[-1].result.text
    assert "- add: 5" in text
    assert "- add: 9" in text
    for event in events:
        json.dumps(event.to_dict())


async def test_leaving_a_stream_early_cancels_the_turn() -> None:
    gate = Gate()
    provider = ScriptedProvider([Reply("Thinking hard", hold=gate.passage)])
    agent = Agent(provider=provider)
    async with contextlib.aclosing(agent.stream("hi")) as stream:
        async for event in stream:
            if isinstance(event, TextChunk):
                break
    assert gate.arrived == 1  # it was held mid-answer, and is gone: the stray-task guard checks


async def test_the_agent_assembles_calls_from_deltas_when_the_provider_does_not(
    registry: ToolRegistry,
) -> None:
    @registry.tool(read_only=True)
    def shout(word: str) -> str:
        return word.upper()

    class DeltasOnly:
        name = "deltas"

        def __init__(self) -> None:
            self.calls = 0

        async def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
            self.calls += 1
            if self.calls == 1:
                yield ToolCallDelta(0, "k1", "shout", '{"wo')
                yield ToolCallDelta(0, None, None, 'rd": "hi"}')
                yield ToolCallDelta(1, None, "shout", '{"word": "yo"}')  # no id: one is made
                yield Finish("tool_calls")
            else:
                yield TextDelta(" / ".join(m.content for m in request.messages if m.tool_call_id))
                yield Finish("stop")

        def capabilities(self, model: str) -> ModelCapabilities:
            return ModelCapabilities()

        async def aclose(self) -> None:
            pass

    result = await Agent(provider=DeltasOnly(), tools=registry).run("shout")
    assert result.text == "HI / YO"
    assert [c.id for c in result.messages[1].tool_calls] == ["k1", "call_1_1"]
    assert_every_call_answered_once(result.messages)


async def test_a_stream_without_finish_is_broken() -> None:
    class NoFinish:
        name = "nofinish"

        async def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
            yield TextDelta("cut")

        def capabilities(self, model: str) -> ModelCapabilities:
            return ModelCapabilities()

        async def aclose(self) -> None:
            pass

    with pytest.raises(StreamBroken, match="without a Finish"):
        await Agent(provider=NoFinish()).run("hi")


async def test_an_agent_without_tools_answers_calls_with_errors() -> None:
    provider = ScriptedProvider([Reply("", [ToolCall("t", "anything")]), "sorry"])
    result = await Agent(provider=provider).run("hi")
    assert tool_messages(result.messages)["t"].status == "error"
    assert provider.requests[0].tools == ()
    assert result.text == "sorry"


def test_agent_options_are_checked() -> None:
    provider = ScriptedProvider()
    with pytest.raises(UsageError, match="max_steps"):
        Agent(provider=provider, max_steps=0)
    with pytest.raises(UsageError, match="tool_timeout_s"):
        Agent(provider=provider, tool_timeout_s=0)
    with pytest.raises(UsageError, match="tool_policy"):
        Agent(provider=provider, tool_policy="sometimes")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="stream"):
        Agent(provider=object())  # type: ignore[arg-type]


async def test_a_turn_takes_only_a_user_message() -> None:
    with pytest.raises(UsageError, match="user message"):
        Turn(Message.assistant("hi"), request_id="r")


# -- the scripted provider ---------------------------------------------------------------------


def _request(*messages: Message, max_tokens: int | None = None) -> ModelRequest:
    return ModelRequest(model="scripted", messages=messages, max_tokens=max_tokens)


async def test_scripted_streams_text_tokens_call_deltas_usage_and_finish() -> None:
    reply = Reply(
        "Two tools, then done.",
        [ToolCall("", "read_file", {"path": "a/long/path/to/a/file.txt"}), ToolCall("x", "ls")],
    )
    provider = ScriptedProvider([reply], chunk_chars=8)
    events = [e async for e in provider.stream(_request(Message.user("hi")))]

    text = [e.text for e in events if isinstance(e, TextDelta)]
    assert text == ["Two", " tools,", " then", " done."]
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert len([d for d in deltas if d.index == 0]) > 1  # the arguments came in pieces
    assert deltas[0].id == "call_0_0"
    assert deltas[0].name == "read_file"
    assert all(d.id is None and d.name is None for d in deltas[1:] if d.index == 0)
    args = "".join(d.arguments for d in deltas if d.index == 0)
    done = [e.call for e in events if isinstance(e, ToolCallDone)]
    assert [c.id for c in done] == ["call_0_0", "x"]
    assert done[0].arguments == args
    assert json.loads(args) == {"path": "a/long/path/to/a/file.txt"}
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.output_tokens == len(text) + len(deltas)
    assert usage.input_tokens > 0
    assert events[-1] == Finish("tool_calls")
    assert provider.calls == 1


async def test_scripted_waits_first_token_delay_then_token_delay_with_the_injected_sleep() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    provider = ScriptedProvider(
        ["one two three"], first_token_delay_s=0.5, token_delay_s=0.01, sleep=sleep
    )
    completion = await complete(provider, _request(Message.user("hi")))
    assert completion.text == "one two three"
    assert completion.finish_reason == "stop"
    assert slept == [0.5, 0.01, 0.01]


async def test_scripted_script_functions_may_be_async_and_lists_run_out() -> None:
    async def script(request: ModelRequest) -> str:
        await asyncio.sleep(0)
        return f"{len(request.messages)} messages"

    provider = ScriptedProvider(script)
    assert (await complete(provider, _request(Message.user("a")))).text == "1 messages"
    assert provider.requests[0].messages == (Message.user("a"),)

    provider = ScriptedProvider(["only one"])
    await complete(provider, _request(Message.user("a")))
    with pytest.raises(UsageError, match="has 1 replies; call 2 has none"):
        await complete(provider, _request(Message.user("a")))
    await provider.aclose()
    with pytest.raises(corral.ClosedError):
        await complete(provider, _request(Message.user("a")))
    with pytest.raises(UsageError, match="not one reply"):
        ScriptedProvider("hello")


async def test_scripted_rules_call_tools_then_summarize_else_echo() -> None:
    provider = ScriptedProvider()
    completion = await complete(provider, _request(Message.user("nothing to do")))
    assert completion.text == "You said: nothing to do"
    assert completion.tool_calls == ()

    ask = Message.user("write 'hi' to notes.txt, then read notes.txt and compute 6 * 7")
    completion = await complete(provider, _request(ask))
    names = [c.name for c in completion.tool_calls]
    assert names == ["write_file", "read_file", "calculate"]  # in the order asked
    args = [json.loads(str(c.arguments)) for c in completion.tool_calls]
    assert args == [
        {"path": "notes.txt", "text": "hi"},
        {"path": "notes.txt"},
        {"expression": "6 * 7"},
    ]
    assert completion.finish_reason == "tool_calls"


async def test_demo_rules_drive_a_file_and_calculator_agent(tmp_path: Path) -> None:
    async with ToolRegistry(cwd=tmp_path) as reg:

        @reg.tool(read_only=True)
        def read_file(path: Path) -> str:
            return path.read_text()

        @reg.tool
        def write_file(path: Path, text: str) -> int:
            return path.write_text(text)

        @reg.tool(read_only=True)
        def list_dir(path: Path) -> list[str]:
            return sorted(p.name for p in path.iterdir())

        @reg.tool(read_only=True)
        def calculate(expression: str) -> Any:
            return eval(expression, {"__builtins__": {}})  # a demo; the pattern allows digits only

        agent = Agent(provider=ScriptedProvider(rules=DEMO_RULES), tools=reg)
        result = await agent.run(
            "write 'hello' to notes.txt then read notes.txt, list files and calculate (1+2)*14"
        )
    assert (tmp_path / "notes.txt").read_text() == "hello"
    lines = result.text.splitlines()
    assert lines[0] == "Here is what the tools returned:"
    assert lines[1:] == [
        "- write_file: 5",
        "- read_file: hello",
        '- list_dir: ["notes.txt"]',
        "- calculate: 42",
    ]


class _BreaksMidBatch(ToolRegistry):
    """A registry whose batch reports one result and then fails: infrastructure, not a tool."""

    async def stream(self, tool_calls: Any, **options: Any) -> AsyncIterator[corral.ToolResult]:  # type: ignore[override]
        calls = list(tool_calls)
        yield corral.ToolResult(calls[0].id, calls[0].name, corral.Status.OK, value="first")
        raise RuntimeError("the executor fell over")


class _ForeignLoop(ToolRegistry):
    """A registry bound to another loop: stream() refuses, execute() proxies."""

    async def stream(self, tool_calls: Any, **options: Any) -> AsyncIterator[corral.ToolResult]:  # type: ignore[override]
        nothing: tuple[corral.ToolResult, ...] = ()
        for result in nothing:  # an async generator that fails before its first result
            yield result
        raise UsageError("stream() must run on the event loop the registry is bound to")


async def test_a_batch_that_breaks_still_answers_every_call() -> None:
    async with _BreaksMidBatch() as reg:
        reg.register(lambda: None, name="step")
        provider = ScriptedProvider([Reply("", [ToolCall("a", "step"), ToolCall("b", "step")])])
        turn = Turn("go", request_id="r3")
        with pytest.raises(RuntimeError, match="fell over"):
            await Agent(provider=provider, tools=reg).run_turn(turn)
    assert_every_call_answered_once(turn.messages)
    answers = tool_messages(turn.messages)
    assert answers["a"].content == "first"
    assert answers["b"].status == "error"
    assert "the executor fell over" in answers["b"].content
    assert turn.messages[-1].partial
    assert isinstance(turn.log.snapshot()[-1], Failed)


async def test_tools_run_through_execute_when_stream_is_refused() -> None:
    async with _ForeignLoop() as reg:
        reg.register(lambda: "via execute", name="step", read_only=True)
        provider = ScriptedProvider([Reply("", [ToolCall("a", "step")]), "ok"])
        result = await Agent(provider=provider, tools=reg).run("go")
    assert tool_messages(result.messages)["a"].content == "via execute"


async def test_run_continues_a_history_it_is_given() -> None:
    agent = Agent(provider=ScriptedProvider(lambda r: f"{len(r.messages)} messages"))
    first = await agent.run("one")
    second = await agent.run("two", history=first.messages)
    assert second.text == "3 messages"
    assert [m.content for m in first.messages + second.messages] == [
        "one",
        "1 messages",
        "two",
        "3 messages",
    ]
