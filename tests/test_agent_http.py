"""The agent loop end to end over HTTP: the fake OpenAI and Anthropic servers, the real SDKs."""

from __future__ import annotations

import asyncio
import json

import corral
from corral.providers import Provider
from corral.providers._limited import LimitedProvider
from corral.providers._ratelimit import LimiterRegistry, RateLimits
from corral.providers.anthropic import AnthropicProvider
from corral.providers.openai import OpenAIProvider
from corral.requests import RequestManager
from corral.testing import Gate
from tests.fake_llm import Call, FakeAnthropic, FakeOpenAI, Reply, ServerRateLimit


def tools_with_gate(gate: Gate) -> corral.ToolRegistry:
    reg = corral.ToolRegistry()

    @reg.tool(read_only=True)
    async def add(a: float, b: float) -> float:
        """Add two numbers."""
        await gate.passage()
        return a + b

    @reg.tool(read_only=True)
    async def multiply(a: float, b: float) -> float:
        """Multiply two numbers."""
        await gate.passage()
        return a * b

    return reg


def two_calls() -> Reply:
    return Reply(
        calls=[
            Call("add", json.dumps({"a": 2, "b": 3}), id="call_add"),
            Call("multiply", json.dumps({"a": 4, "b": 5}), id="call_mul"),
        ],
        piece_chars=3,
    )


async def run_two_step_agent(provider: Provider, gate: Gate) -> corral.RunResult:
    reg = tools_with_gate(gate)
    agent = corral.Agent(provider=provider, tools=reg, system="Use tools.", model="gpt-4o")

    async def release_when_both_run() -> None:
        await gate.wait_for(2)  # both calls of the one model message are in flight at once
        gate.open()

    async with reg:
        releaser = asyncio.create_task(release_when_both_run())
        result = await agent.run("what are 2+3 and 4*5?")
        await releaser
    return result


async def test_a_multi_step_run_with_parallel_tool_calls_over_openai() -> None:
    fake = FakeOpenAI(two_calls(), Reply(text="5 and 20."))
    gate = Gate()
    async with fake.serve() as base_url:
        provider = OpenAIProvider(base_url=base_url, api_key="test")
        try:
            result = await run_two_step_agent(provider, gate)
        finally:
            await provider.aclose()
    assert result.text == "5 and 20."
    assert result.steps == 2
    second = fake.bodies[1]["messages"]
    answers = {m["tool_call_id"]: m["content"] for m in second if m["role"] == "tool"}
    assert answers == {"call_add": "5.0", "call_mul": "20.0"}
    assert [t["function"]["name"] for t in fake.bodies[0]["tools"]] == ["add", "multiply"]


async def test_a_multi_step_run_with_parallel_tool_calls_over_anthropic() -> None:
    fake = FakeAnthropic(two_calls(), Reply(text="5 and 20."))
    gate = Gate()
    async with fake.serve() as base_url:
        provider = AnthropicProvider(base_url=base_url, api_key="test")
        try:
            result = await run_two_step_agent(provider, gate)
        finally:
            await provider.aclose()
    assert result.text == "5 and 20."
    turn = fake.bodies[1]["messages"][-1]
    assert turn["role"] == "user"
    results = {
        b["tool_use_id"]: b["content"] for b in turn["content"] if b["type"] == "tool_result"
    }
    assert results == {"call_add": "5.0", "call_mul": "20.0"}


async def test_thirty_agents_started_at_once_share_one_limiter_and_all_finish() -> None:
    # 30 sessions send their first message in the same instant; the server allows 10 requests a
    # second. The shared limiter spaces them out, pauses everyone on the first 429, and every
    # run completes.
    fake = FakeOpenAI(default=Reply(text="ok"), rate_limit=ServerRateLimit(per_s=10, burst=2))
    async with fake.serve() as base_url:
        inner = OpenAIProvider(base_url=base_url, api_key="test")
        provider = LimitedProvider(
            inner,
            limits=RateLimits(rpm=600, rpm_burst=5, backoff=corral._retry.Backoff(attempts=6)),
            registry=LimiterRegistry(),
        )
        agent = corral.Agent(provider=provider, model="gpt-4o")
        async with corral.Sessions(agent) as sessions:
            handles = [sessions.create().send(f"agent {i}") for i in range(30)]
            results = await asyncio.gather(*(h.result() for h in handles))
        await provider.aclose()
    assert [r.text for r in results] == ["ok"] * 30
    accepted = sorted(a.at for a in fake.arrivals if not a.limited)
    assert len(accepted) == 30
    for i in range(len(accepted)):
        in_window = sum(1 for t in accepted[i:] if t - accepted[i] < 1.0)
        assert in_window <= 12, f"{in_window} requests accepted within one second"
    assert sum(1 for a in fake.arrivals if a.limited) <= 5


async def test_every_model_call_of_many_sessions_goes_through_one_request_manager() -> None:
    # Identical first steps at temperature 0 share one provider call; the rest are distinct.
    scripted = corral.ScriptedProvider()
    async with RequestManager(scripted) as manager:
        agent = corral.Agent(provider=manager, model="demo", temperature=0)
        async with corral.Sessions(agent) as sessions:
            handles = [sessions.create().send("hello there") for _ in range(5)]
            results = await asyncio.gather(*(h.result() for h in handles))
        assert {r.text for r in results} == {results[0].text}
        assert scripted.calls == 1
        assert manager.statistics().dedup_hits == 4
