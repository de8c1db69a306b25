from __future__ import annotations

import asyncio
import threading

import pytest

from corral.errors import ClosedError
from corral.executors.inline import InlineExecutor
from corral.testing import Gate
from tests import support
from tests.executors.helpers import job


async def test_awaits_coroutine_functions_in_the_calling_task() -> None:
    executor = InlineExecutor()

    async def whose_task() -> asyncio.Task[object] | None:
        return asyncio.current_task()

    assert await executor.run(job(whose_task)) is asyncio.current_task()
    assert await executor.run(job(support.async_sleep_ms, ms=1)) == 1


async def test_calls_plain_functions_in_place() -> None:
    executor = InlineExecutor()
    assert await executor.run(job(support.add, a=1, b=2)) == 3
    assert await executor.run(job(threading.get_ident)) == threading.get_ident()


async def test_raises_what_the_function_raised() -> None:
    executor = InlineExecutor()
    with pytest.raises(ZeroDivisionError):
        await executor.run(job(support.divide, a=1, b=0))
    assert executor.statistics().in_flight == 0


async def test_counts_calls_in_flight() -> None:
    executor = InlineExecutor()
    gate = Gate()
    tasks = [asyncio.create_task(executor.run(job(gate.passage))) for _ in range(3)]
    await gate.wait_for(3)
    stats = executor.statistics()
    assert (stats.name, stats.in_flight, stats.queued) == ("async", 3, 0)
    gate.open()
    await asyncio.gather(*tasks)
    assert executor.statistics().in_flight == 0


async def test_cancellation_reaches_the_coroutine() -> None:
    executor = InlineExecutor()
    gate = Gate()
    seen: list[str] = []

    async def wait_at_gate() -> None:
        try:
            await gate.passage()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = asyncio.create_task(executor.run(job(wait_at_gate)))
    await gate.wait_for(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]
    assert executor.statistics().in_flight == 0


async def test_aclose_is_idempotent_and_refuses_new_work() -> None:
    executor = InlineExecutor()
    await executor.aclose()
    await executor.aclose()
    with pytest.raises(ClosedError, match="async executor is closed"):
        await executor.run(job(support.add, a=1, b=1))
