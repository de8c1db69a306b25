"""Concurrency budgets through the registry: per tool, named and shared, global; across batches."""

from __future__ import annotations

import asyncio

import pytest

import corral
from corral import ToolRegistry
from corral.scheduler import BudgetStatistics
from corral.testing import Gate
from tests.scheduler.helpers import MakeRegistry, call
from tests.support import Timeline


async def settle() -> None:
    """Let every ready task run for a while: a call the cap should hold back would start."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_tool_limit_caps_its_calls_across_concurrent_batches(
    registry: ToolRegistry,
) -> None:
    gate = Gate()
    timeline = Timeline()

    @registry.tool(read_only=True, limit=2)
    async def capped(tag: str) -> str:
        with timeline.span(tag):
            await gate.passage()
        return tag

    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        first = tg.create_task(
            registry.execute([call(f"a{i}", "capped", tag=f"a{i}") for i in range(3)])
        )
        second = tg.create_task(
            registry.execute([call(f"b{i}", "capped", tag=f"b{i}") for i in range(3)])
        )
        await gate.wait_for(2)
        await settle()
        assert gate.arrived == 2
        stats = registry.statistics()
        assert stats.budgets["tool:capped"] == BudgetStatistics("tool:capped", 2, 2, 4)
        assert stats.queued == 4
        gate.open()
    # Nothing was dropped: every call over the cap waited its turn and ran.
    assert first.result().ok
    assert second.result().ok
    assert timeline.max_active == 2
    assert len(timeline.started()) == 6


async def test_a_named_budget_is_shared_by_its_tools_first_come_first_served(
    registry: ToolRegistry,
) -> None:
    registry.set_limit("api", 1)
    gate = Gate()
    timeline = Timeline()

    async def search(tag: str) -> None:
        with timeline.span(tag):
            await gate.passage()

    async def fetch(tag: str) -> None:
        with timeline.span(tag):
            await gate.passage()

    registry.register(search, read_only=True, limit="api")
    registry.register(fetch, read_only=True, limit="api")

    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        a = tg.create_task(
            registry.execute([call("a1", "search", tag="a1"), call("a2", "fetch", tag="a2")])
        )
        await gate.wait_for(1)
        b = tg.create_task(
            registry.execute([call("b1", "fetch", tag="b1"), call("b2", "search", tag="b2")])
        )
        await settle()
        assert registry.statistics().budgets["api"].waiting == 3
        gate.open()
    assert a.result().ok
    assert b.result().ok
    assert timeline.max_active == 1
    assert timeline.started() == ["a1", "a2", "b1", "b2"]  # arrival order, across batches


async def test_raising_a_limit_at_run_time_admits_waiting_calls(registry: ToolRegistry) -> None:
    registry.set_limit("api", 1)
    gate = Gate()

    @registry.tool(read_only=True, limit="api")
    async def capped(n: int) -> int:
        await gate.passage()
        return n

    task = asyncio.create_task(registry.execute([call(f"c{n}", "capped", n=n) for n in range(4)]))
    async with asyncio.timeout(5):
        await gate.wait_for(1)
        registry.set_limit("api", 3)
        await gate.wait_for(3)
        await settle()
        assert gate.arrived == 3
        gate.open()
        results = await task
    assert [r.value for r in results] == [0, 1, 2, 3]
    assert registry.statistics().budgets["api"].limit == 3


async def test_lowering_a_limit_lets_running_calls_finish_first(registry: ToolRegistry) -> None:
    registry.set_limit("api", 3)
    gates = [Gate(), Gate()]
    timeline = Timeline()

    @registry.tool(read_only=True, limit="api")
    async def capped(tag: str, wave: int) -> None:
        with timeline.span(tag):
            await gates[wave].passage()

    first_wave = [call(f"x{n}", "capped", tag=f"x{n}", wave=0) for n in range(3)]
    second_wave = [call(f"y{n}", "capped", tag=f"y{n}", wave=1) for n in range(3)]
    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        tg.create_task(registry.execute(first_wave))
        await gates[0].wait_for(3)
        registry.set_limit("api", 1)
        tg.create_task(registry.execute(second_wave))
        gates[0].open()
        gates[1].open()
    # Once lowered, the second wave ran one at a time.
    for a, b in [("y0", "y1"), ("y1", "y2")]:
        assert timeline.before(a, b)
    assert all(timeline.before(f"x{n}", "y0") for n in range(3))


async def test_max_concurrency_caps_every_call_of_the_registry(make_registry: MakeRegistry) -> None:
    reg = make_registry(max_concurrency=2)
    gate = Gate()
    timeline = Timeline()

    @reg.tool(read_only=True)
    async def on_loop(tag: str) -> None:
        with timeline.span(tag):
            await gate.passage()

    @reg.tool(writes="memory:{tag}", limit=5)
    async def declared(tag: str) -> None:
        with timeline.span(tag):
            await gate.passage()

    calls = [call(f"l{n}", "on_loop", tag=f"l{n}") for n in range(3)]
    calls += [call(f"d{n}", "declared", tag=f"d{n}") for n in range(3)]
    task = asyncio.create_task(reg.execute(calls))
    async with asyncio.timeout(5):
        await gate.wait_for(2)
        await settle()
        assert gate.arrived == 2
        budget = reg.statistics().budgets["max_concurrency"]
        assert (budget.in_use, budget.waiting) == (2, 4)
        gate.open()
        results = await task
    assert results.ok
    assert timeline.max_active == 2


async def test_a_named_budget_without_a_size_is_a_usage_error(registry: ToolRegistry) -> None:
    @registry.tool(read_only=True, limit="unsized")
    async def capped() -> None:
        pass

    with pytest.raises(corral.UsageError, match=r"budget 'unsized', which has no size"):
        await registry.execute([call("a", "capped")])


async def test_budgets_are_free_after_failures_and_timeouts(registry: ToolRegistry) -> None:
    registry.set_limit("api", 1)

    @registry.tool(read_only=True, limit="api", timeout=0.05)
    async def flaky(mode: str) -> str:
        if mode == "raise":
            raise ValueError("no")
        if mode == "hang":
            await asyncio.Event().wait()
        return mode

    calls = [call(m, "flaky", mode=m) for m in ("raise", "hang", "ok")]
    results = await registry.execute(calls)
    assert [r.status.value for r in results] == ["error", "timeout", "ok"]
    assert registry.statistics().budgets["api"] == BudgetStatistics("api", 1, 0, 0)
