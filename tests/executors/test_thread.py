from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import aclosing

import pytest

from corral.errors import ClosedError, UsageError
from corral.executors.thread import ThreadExecutor
from corral.testing import Recorder
from tests import support
from tests.executors.helpers import is_idle, job
from tests.support import eventually

# A blocked test thread waits at most this long, so a failing test cannot hang the suite.
BLOCK_S = 10.0


async def test_runs_a_function_in_a_worker_thread(threads: ThreadExecutor) -> None:
    assert await threads.run(job(support.add, a=1, b=2)) == 3
    ident = await threads.run(job(threading.get_ident))
    assert ident != threading.get_ident()
    assert threads.statistics().name == "thread"


async def test_raises_what_the_function_raised(threads: ThreadExecutor) -> None:
    with pytest.raises(ZeroDivisionError):
        await threads.run(job(support.divide, a=1, b=0))


async def test_async_function_runs_on_the_threads_own_loop(threads: ThreadExecutor) -> None:
    async def where() -> tuple[int, int]:
        await asyncio.sleep(0)
        return threading.get_ident(), id(asyncio.get_running_loop())

    thread, loop = await threads.run(job(where))
    assert thread != threading.get_ident()
    assert loop != id(asyncio.get_running_loop())
    # The warm thread keeps its loop for the next call rather than making one per call.
    assert await threads.run(job(where)) == (thread, loop)
    assert await threads.run(job(support.async_sleep_ms, ms=1)) == 1


async def test_hundred_blocking_calls_run_at_the_same_time(threads: ThreadExecutor) -> None:
    # The barrier releases only once all 100 calls wait at it at once; with fewer threads than
    # calls it times out and every waiter raises BrokenBarrierError.
    barrier = threading.Barrier(100, timeout=BLOCK_S)
    recorder = Recorder()

    def meet(i: int) -> int:
        with recorder.span(str(i)):
            barrier.wait()
        return i

    results = await asyncio.gather(*(threads.run(job(meet, i=i)) for i in range(100)))
    assert results == list(range(100))
    assert recorder.max_active == 100
    assert threads.statistics().workers == 100


async def test_calls_beyond_max_threads_wait_for_a_thread() -> None:
    release = threading.Event()
    recorder = Recorder()

    def block(i: int) -> int:
        with recorder.span(str(i)):
            release.wait(BLOCK_S)
        return i

    async with aclosing(ThreadExecutor(max_threads=2)) as executor:
        tasks = [asyncio.create_task(executor.run(job(block, i=i))) for i in range(5)]
        try:
            await eventually(lambda: executor.statistics().in_flight == 2)
            await eventually(lambda: executor.statistics().queued == 3)
            assert executor.statistics().workers == 2
        finally:
            release.set()
        assert await asyncio.gather(*tasks) == list(range(5))
        assert recorder.max_active == 2
        assert is_idle(executor.statistics())


async def test_idle_threads_retire_after_idle_timeout() -> None:
    release = threading.Event()

    async with aclosing(ThreadExecutor(idle_timeout_s=0.05)) as executor:
        tasks = [
            asyncio.create_task(executor.run(job(release.wait, timeout=BLOCK_S))) for _ in range(5)
        ]
        try:
            await eventually(lambda: executor.statistics().in_flight == 5)
            assert executor.statistics().workers == 5
        finally:
            release.set()
        await asyncio.gather(*tasks)
        await eventually(lambda: executor.statistics().workers == 0, what="threads retired")
        # A call after they all retired starts a thread again.
        assert await executor.run(job(support.add, a=2, b=2)) == 4


async def test_pool_still_runs_calls_after_a_queued_burst_and_retirement() -> None:
    # Regression: a call queued behind a busy pool (no thread spawned, none idle) was not
    # counted, so the thread that took it later counted itself idle twice. After retiring it
    # left a phantom idle thread behind, and the next call waited for it forever.
    async with aclosing(ThreadExecutor(max_threads=1, idle_timeout_s=0.05)) as executor:
        results = await asyncio.gather(
            *(executor.run(job(support.sleep_ms, ms=1)) for _ in range(3))
        )
        assert results == [1, 1, 1]
        await eventually(lambda: executor.statistics().workers == 0, what="the thread retired")
        async with asyncio.timeout(5):
            assert await executor.run(job(support.add, a=1, b=1)) == 2


async def test_a_warm_thread_is_reused(threads: ThreadExecutor) -> None:
    first = await threads.run(job(threading.get_ident))
    second = await threads.run(job(threading.get_ident))
    assert first == second
    assert threads.statistics().workers == 1


async def test_cancel_before_a_thread_starts_it_removes_the_call() -> None:
    release = threading.Event()
    ran: list[str] = []

    def note(name: str) -> None:
        ran.append(name)

    async with aclosing(ThreadExecutor(max_threads=1)) as executor:
        first = asyncio.create_task(executor.run(job(release.wait, timeout=BLOCK_S)))
        try:
            await eventually(lambda: executor.statistics().in_flight == 1)
            second = asyncio.create_task(executor.run(job(note, name="second")))
            await eventually(lambda: executor.statistics().queued == 1)
            second.cancel()
            with pytest.raises(asyncio.CancelledError):
                await second
            assert executor.statistics().queued == 0
        finally:
            release.set()
        assert await first is True
        # The one thread passes over the cancelled call and takes the next one.
        await executor.run(job(note, name="third"))
        assert ran == ["third"]
        assert is_idle(executor.statistics())


async def test_cancel_after_start_returns_at_once_and_the_thread_runs_on(
    threads: ThreadExecutor,
) -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait(BLOCK_S)
        finished.set()

    task = asyncio.create_task(threads.run(job(block)))
    try:
        await eventually(started.is_set)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The caller is back while the thread is still blocked: it could not be stopped, and it
        # still counts as in flight.
        assert not finished.is_set()
        assert threads.statistics().in_flight == 1
    finally:
        release.set()
    await eventually(lambda: threads.statistics().in_flight == 0, what="the thread ended")
    assert finished.is_set()


async def test_timeout_returns_at_once_and_the_thread_runs_on(threads: ThreadExecutor) -> None:
    release, finished = threading.Event(), threading.Event()

    def block() -> None:
        release.wait(BLOCK_S)
        finished.set()

    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await threads.run(job(block))
        assert not finished.is_set()
        assert threads.statistics().in_flight == 1
    finally:
        release.set()
    await eventually(lambda: threads.statistics().in_flight == 0, what="the thread ended")
    assert finished.is_set()


async def test_stop_iteration_becomes_an_error_and_spares_other_calls(
    threads: ThreadExecutor,
) -> None:
    # Regression: asyncio refuses StopIteration in a Future; the TypeError it raised escaped the
    # delivery callback, and every call finishing in the same wake-up hung forever.
    async with asyncio.timeout(5):
        results = await asyncio.gather(
            threads.run(job(support.raise_stop_iteration)),
            *(threads.run(job(support.add, a=i, b=0)) for i in range(20)),
            return_exceptions=True,
        )
    error = results[0]
    assert isinstance(error, RuntimeError)
    assert "StopIteration" in str(error)
    assert isinstance(error.__cause__, StopIteration)
    assert results[1:] == list(range(20))


async def test_aclose_is_idempotent_and_refuses_new_work() -> None:
    executor = ThreadExecutor()
    assert await executor.run(job(support.add, a=1, b=1)) == 2
    await executor.aclose()
    await executor.aclose()
    assert executor.statistics().workers == 0
    with pytest.raises(ClosedError, match="closed"):
        await executor.run(job(support.add, a=1, b=1))


async def test_aclose_finishes_calls_queued_before_it() -> None:
    release = threading.Event()
    executor = ThreadExecutor(max_threads=1)
    first = asyncio.create_task(executor.run(job(release.wait, timeout=BLOCK_S)))
    second = asyncio.create_task(executor.run(job(support.add, a=1, b=2)))
    try:
        await eventually(lambda: executor.statistics().queued == 1)
        closing = asyncio.create_task(executor.aclose())
        await asyncio.sleep(0)
        with pytest.raises(ClosedError, match="closing"):
            await executor.run(job(support.add, a=1, b=1))
    finally:
        release.set()
    assert await first is True
    assert await second == 3
    await closing
    assert executor.statistics().workers == 0


async def test_aclose_gives_up_on_a_stuck_thread_after_close_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()
    executor = ThreadExecutor(close_timeout_s=0.05)
    task = asyncio.create_task(executor.run(job(release.wait, timeout=BLOCK_S)))
    try:
        await eventually(lambda: executor.statistics().in_flight == 1)
        task.cancel()
        with caplog.at_level(logging.WARNING, logger="corral.executors.thread"):
            await executor.aclose()
        assert "still running" in caplog.text
        assert executor.statistics().in_flight == 1
    finally:
        release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: executor.statistics().workers == 0, what="the thread exited")


def test_a_new_event_loop_can_use_the_pool_after_the_first_closed() -> None:
    # Regression: a thread abandoned by a timeout finished after its loop had closed; its wake-up
    # failed and left "a wake-up is pending" set, so no later call was ever delivered.
    executor = ThreadExecutor()
    release = threading.Event()

    async def abandon() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await executor.run(job(release.wait, timeout=BLOCK_S))

    asyncio.run(abandon())
    release.set()
    deadline = time.monotonic() + 5
    while executor.statistics().in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert executor.statistics().in_flight == 0

    async def again() -> int:
        try:
            async with asyncio.timeout(5):
                return int(await executor.run(job(support.add, a=1, b=2)))
        finally:
            await executor.aclose()

    assert asyncio.run(again()) == 3


@pytest.mark.parametrize(
    ("options", "bad"),
    [({"max_threads": 0}, "max_threads"), ({"idle_timeout_s": 0}, "idle_timeout_s")],
)
def test_rejects_bad_configuration(options: dict[str, float], bad: str) -> None:
    with pytest.raises(UsageError, match=bad):
        ThreadExecutor(**options)  # type: ignore[arg-type]
