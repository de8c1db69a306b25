"""Cancelling a batch, and streaming results as calls finish.

Every test here also relies on the autouse guards: no task of the batch is left afterwards, and
the registry fixtures assert `statistics()` is idle (no call in flight or queued, budgets free).
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from corral import Status, ToolRegistry
from corral.testing import Gate
from tests.scheduler.helpers import MakeRegistry, call, closing


async def forever() -> None:
    await asyncio.Event().wait()


async def test_cancelling_the_caller_cancels_every_call_in_flight(registry: ToolRegistry) -> None:
    gate = Gate()
    cancelled: list[str] = []
    started: list[str] = []

    @registry.tool(writes="memory:{key}")
    async def hold(key: str, tag: str) -> None:
        started.append(tag)
        try:
            await gate.passage()
            await forever()
        except asyncio.CancelledError:
            cancelled.append(tag)
            raise

    calls = [
        call("a", "hold", key="a", tag="a"),
        call("b", "hold", key="b", tag="b"),
        call("a2", "hold", key="a", tag="a2"),  # waits for a
    ]
    task = asyncio.create_task(registry.execute(calls))
    async with asyncio.timeout(5):
        await gate.wait_for(2)
    assert registry.statistics().queued == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(cancelled) == ["a", "b"]
    assert started == ["a", "b"]  # a2 never started
    assert registry.statistics().idle


async def test_an_outer_timeout_cancels_the_batch(registry: ToolRegistry) -> None:
    @registry.tool(read_only=True)
    async def hang() -> None:
        await forever()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await registry.execute([call("a", "hang"), call("b", "hang")])
    assert registry.statistics().idle


async def test_cancelling_calls_that_wait_for_a_budget_frees_it(
    make_registry: MakeRegistry,
) -> None:
    reg = make_registry(max_concurrency=1)
    gate = Gate()

    @reg.tool(read_only=True)
    async def hold(n: int) -> None:
        await gate.passage()
        await forever()

    task = asyncio.create_task(reg.execute([call(f"c{n}", "hold", n=n) for n in range(4)]))
    async with asyncio.timeout(5):
        await gate.wait_for(1)
    budget = reg.statistics().budgets["max_concurrency"]
    assert (budget.in_use, budget.waiting) == (1, 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    budget = reg.statistics().budgets["max_concurrency"]
    assert (budget.in_use, budget.waiting) == (0, 0)


async def test_a_tool_that_swallows_cancellation_does_not_break_the_cancel(
    registry: ToolRegistry,
) -> None:
    # Regression: the stubborn call returned, readied its successor, and starting that
    # successor in the shutting-down TaskGroup raised RuntimeError: the caller got an
    # ExceptionGroup instead of CancelledError, and an un-awaited coroutine leaked.
    gate = Gate()
    ran_after = False

    @registry.tool(writes="memory:k")
    async def stubborn() -> str:
        try:
            await gate.passage()
            await forever()
        except asyncio.CancelledError:
            return "swallowed"  # a misbehaving tool: never do this
        return "unreachable"

    @registry.tool(writes="memory:k")
    async def after() -> None:
        nonlocal ran_after
        ran_after = True

    task = asyncio.create_task(registry.execute([call("a", "stubborn"), call("b", "after")]))
    async with asyncio.timeout(5):
        await gate.wait_for(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not ran_after


async def test_a_cancelled_thread_call_runs_on_and_is_counted_until_it_ends(
    make_registry: MakeRegistry,
) -> None:
    reg = make_registry()
    entered = threading.Event()
    release = threading.Event()

    @reg.tool(read_only=True)
    def blocking() -> None:
        entered.set()
        release.wait(10)

    task = asyncio.create_task(reg.execute([call("a", "blocking")]))
    async with asyncio.timeout(5):
        while not entered.is_set():  # noqa: ASYNC110 - set by a thread, which cannot await
            await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reg.statistics().in_flight == 1
    release.set()  # the fixture then waits, bounded, for the registry to go idle


# -- stream ------------------------------------------------------------------------------------


async def test_stream_yields_results_in_completion_order(registry: ToolRegistry) -> None:
    gate = Gate()
    release = {tag: asyncio.Event() for tag in "abcd"}

    @registry.tool(read_only=True)
    async def wait(tag: str) -> str:
        await gate.passage()
        await release[tag].wait()
        if tag == "b":
            raise ValueError("b failed")
        return tag

    received: asyncio.Queue[tuple[str, Status]] = asyncio.Queue()

    async def consume() -> None:
        async with closing(registry.stream([call(t, "wait", tag=t) for t in "abcd"])) as s:
            async for result in s:
                received.put_nowait((result.id, result.status))

    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        tg.create_task(consume())
        await gate.wait_for(4)
        gate.open()
        seen = []
        for tag in "dbca":  # release one call at a time; each must come out next
            release[tag].set()
            seen.append(await received.get())
    assert seen == [("d", Status.OK), ("b", Status.ERROR), ("c", Status.OK), ("a", Status.OK)]


async def test_stream_includes_skipped_and_up_front_failures(registry: ToolRegistry) -> None:
    @registry.tool(writes="memory:k")
    async def put(fail: bool) -> None:
        if fail:
            raise ValueError("no")

    calls = [call("a", "put", fail=True), call("b", "put", fail=False), call("c", "missing")]
    async with closing(registry.stream(calls)) as stream:
        results = {r.id: r.status async for r in stream}
    assert results == {"a": Status.ERROR, "b": Status.SKIPPED, "c": Status.ERROR}


async def test_breaking_out_of_a_stream_cancels_the_rest(registry: ToolRegistry) -> None:
    cancelled = asyncio.Event()

    @registry.tool(read_only=True)
    async def quick() -> str:
        return "quick"

    @registry.tool(read_only=True)
    async def slow() -> None:
        try:
            await forever()
        finally:
            cancelled.set()

    async with asyncio.timeout(5):
        stream = registry.stream([call("s", "slow"), call("q", "quick")])
        async with closing(stream):
            async for result in stream:
                assert result.id == "q"
                break
    assert cancelled.is_set()
    assert registry.statistics().idle


async def test_cancelling_a_stream_consumer_cancels_the_calls(registry: ToolRegistry) -> None:
    gate = Gate()
    cancelled: list[str] = []

    @registry.tool(read_only=True)
    async def hold(tag: str) -> None:
        try:
            await gate.passage()
            await forever()
        except asyncio.CancelledError:
            cancelled.append(tag)
            raise

    async def consume() -> None:
        async with closing(registry.stream([call(t, "hold", tag=t) for t in "ab"])) as s:
            async for _ in s:
                pass

    task = asyncio.create_task(consume())
    async with asyncio.timeout(5):
        await gate.wait_for(2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(cancelled) == ["a", "b"]
    assert registry.statistics().idle
