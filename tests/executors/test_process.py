from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from corral.errors import ClosedError, UsageError, WorkerDied
from corral.executors.base import FunctionRef, Job
from corral.executors.process import ProcessExecutor, RemoteError, UnpicklableResult
from tests import support
from tests.executors.helpers import FileGate, gone, is_idle, job, read_pid, ref_for
from tests.support import eventually

HOOK = "tests.executors.import_hook"


@pytest.fixture
def gate(tmp_path: Path) -> FileGate:
    return FileGate(tmp_path)


def ref_job(ref: FunctionRef, **kwargs: Any) -> Job:
    def unused(**_: Any) -> None:
        raise AssertionError("a process job never runs its function in the parent")

    return Job(fn=unused, kwargs=kwargs, is_async=False, ref=lambda: ref)


async def back_to_size(pool: ProcessExecutor, *, replaced: int, size: int = 2) -> None:
    def settled() -> bool:
        stats = pool.statistics()
        return stats.workers == size and stats.replaced_workers == replaced

    await eventually(settled, timeout_s=10.0, what=f"{replaced} replacement(s), {size} workers")


# -- calls -----------------------------------------------------------------------------------


async def test_runs_a_function_in_a_worker_process(pool: ProcessExecutor) -> None:
    assert await pool.run(job(support.add, a=1, b=2)) == 3
    pid = await pool.run(job(support.pid))
    assert pid != os.getpid()
    assert pid in pool.worker_pids()
    stats = pool.statistics()
    assert (stats.name, stats.workers, stats.replaced_workers) == ("process", 2, 0)


async def test_run_starts_the_pool_on_first_use() -> None:
    async with aclosing(ProcessExecutor(size=1)) as one:
        assert one.statistics().workers == 0
        assert await one.run(job(support.add, a=2, b=3)) == 5
        assert one.statistics().workers == 1


async def test_async_function_runs_in_a_worker(one: ProcessExecutor) -> None:
    assert await one.run(job(support.async_sleep_ms, ms=2)) == 2
    assert await one.run(job(support.async_sleep_ms, ms=1)) == 1


async def test_module_function_travels_by_import_path() -> None:
    ref = ref_for(support.add)
    assert (ref.module, ref.qualname, ref.pickled) == ("tests.support", "add", None)


async def test_closure_travels_by_value_once_per_worker(caplog: pytest.LogCaptureFixture) -> None:
    count = 0

    def counter() -> int:
        nonlocal count
        count += 1
        return count

    with caplog.at_level(logging.DEBUG, logger="corral.executors.base"):
        ref = FunctionRef.for_function(counter, "counter")
    assert ref.module is None
    assert ref.pickled is not None
    assert "counter is not importable by path; it travels by value" in caplog.text
    async with aclosing(ProcessExecutor(size=1)) as one:
        results = [await one.run(ref_job(ref)) for _ in range(3)]
    # The worker unpickled it once and kept it, state and all; it never ran here.
    assert results == [1, 2, 3]
    assert count == 0


async def test_main_module_function_travels_by_value(
    one: ProcessExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    def triple(x: int) -> int:
        return 3 * x

    triple.__module__ = "__main__"
    triple.__qualname__ = "triple"
    with caplog.at_level(logging.DEBUG, logger="corral.executors.base"):
        ref = FunctionRef.for_function(triple, "triple")
    assert ref.pickled is not None
    assert "travels by value" in caplog.text
    assert await one.run(ref_job(ref, x=3)) == 9


async def test_preload_imports_modules_before_the_worker_is_ready() -> None:
    # colorsys: a standard module that neither the worker nor tests.support imports.
    async with aclosing(ProcessExecutor(size=1, preload=["colorsys"])) as warm:
        await warm.start()
        assert await warm.run(job(support.is_imported, module="colorsys")) is True
    async with aclosing(ProcessExecutor(size=1)) as cold:
        assert await cold.run(job(support.is_imported, module="colorsys")) is False


async def test_a_module_that_fails_to_preload_does_not_stop_the_worker(
    capfd: pytest.CaptureFixture[str],
) -> None:
    async with aclosing(ProcessExecutor(size=1, preload=["corral_no_such_module"])) as one:
        assert await one.run(job(support.add, a=1, b=1)) == 2
    assert "cannot preload 'corral_no_such_module'" in capfd.readouterr().err


# -- errors of one call ----------------------------------------------------------------------


async def test_exception_comes_back_as_the_same_type(one: ProcessExecutor) -> None:
    pids = set(one.worker_pids())
    with pytest.raises(ZeroDivisionError, match="division by zero"):
        await one.run(job(support.divide, a=1, b=0))
    assert set(one.worker_pids()) == pids
    assert one.statistics().replaced_workers == 0


async def test_exception_that_cannot_be_pickled_becomes_remote_error(one: ProcessExecutor) -> None:
    with pytest.raises(RemoteError, match="lock") as info:
        await one.run(job(support.raise_unpicklable))
    assert info.value.remote_type == "ValueError"
    assert await one.run(job(support.add, a=1, b=1)) == 2


async def test_stop_iteration_becomes_an_error(one: ProcessExecutor) -> None:
    # Regression: asyncio refuses StopIteration in a Future; the TypeError escaped the pipe
    # callback and the call waited forever.
    async with asyncio.timeout(10):
        with pytest.raises(RuntimeError, match="StopIteration") as info:
            await one.run(job(support.raise_stop_iteration))
    assert isinstance(info.value.__cause__, StopIteration)
    assert await one.run(job(support.add, a=1, b=1)) == 2


async def test_unpicklable_result_is_an_error_naming_its_type(one: ProcessExecutor) -> None:
    pids = set(one.worker_pids())
    with pytest.raises(UnpicklableResult, match="result of type function cannot be pickled"):
        await one.run(job(support.unpicklable))
    assert set(one.worker_pids()) == pids
    assert await one.run(job(support.add, a=1, b=1)) == 2


async def test_result_that_cannot_be_unpickled_here_is_an_error(one: ProcessExecutor) -> None:
    # Regression: the unpickling error escaped the pipe callback; the call waited forever and
    # the worker was never given back.
    pids = set(one.worker_pids())
    async with asyncio.timeout(10):
        with pytest.raises(UnpicklableResult, match="RefusesToLoad cannot be unpickled"):
            await one.run(job(support.make_refuses_to_load))
    assert set(one.worker_pids()) == pids
    results = await asyncio.gather(*(one.run(job(support.add, a=i, b=0)) for i in range(4)))
    assert results == [0, 1, 2, 3]


async def test_function_that_cannot_be_loaded_reports_why_on_every_call(
    one: ProcessExecutor,
) -> None:
    # Regression: the worker was sent the pickled function once; when loading it failed, later
    # calls sent none and failed on an internal assertion instead.
    ref = FunctionRef(key="broken@1", pickled=b"not a pickle")
    for _ in range(3):
        with pytest.raises(RuntimeError, match="'broken@1' cannot be loaded in the worker"):
            await one.run(ref_job(ref))
    missing = FunctionRef(key="missing@1", module="corral_no_such_module", qualname="f")
    for _ in range(2):
        with pytest.raises(ModuleNotFoundError, match="corral_no_such_module"):
            await one.run(ref_job(missing))
    assert one.statistics().replaced_workers == 0


async def test_print_to_stdout_does_not_corrupt_the_protocol(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # A pool of its own, started during the test: fixtures start before capfd captures, and
    # workers keep the stderr they were born with.
    async with aclosing(ProcessExecutor(size=2)) as pool:
        calls = [pool.run(job(support.chatty, n=500)), pool.run(job(support.chatty, n=3))]
        assert list(await asyncio.gather(*calls)) == [500, 3]
        assert await pool.run(job(support.add, a=1, b=1)) == 2
    assert "noise 499" in capfd.readouterr().err


async def test_large_results_and_arguments_arrive_intact(pool: ProcessExecutor) -> None:
    size = 8 << 20
    sent = os.urandom(size)
    made, echoed = await asyncio.gather(
        pool.run(job(support.payload, size=size)), pool.run(job(support.echo, value=sent))
    )
    assert made == support.payload(size)
    assert echoed == sent


@pytest.mark.parametrize(
    "value",
    [threading.Lock(), lambda: None, (lambda: None).__code__],
    ids=["lock", "lambda", "code"],
)
async def test_arguments_that_cannot_be_pickled_are_a_usage_error(
    one: ProcessExecutor, value: object
) -> None:
    pids = set(one.worker_pids())
    with pytest.raises(UsageError, match="cannot be sent to a worker process"):
        await one.run(job(support.echo, value=value))
    assert set(one.worker_pids()) == pids
    assert await one.run(job(support.add, a=1, b=1)) == 2
    assert one.statistics().replaced_workers == 0


async def test_arguments_that_the_worker_cannot_load_are_a_usage_error(
    one: ProcessExecutor,
) -> None:
    # Regression: the worker failed to unpickle the frame and died with a traceback; the call
    # came back as "worker process died".
    pids = set(one.worker_pids())
    with pytest.raises(UsageError, match="RefusesToLoad cannot be unpickled"):
        await one.run(job(support.echo, value=support.RefusesToLoad()))
    assert set(one.worker_pids()) == pids
    assert one.statistics().replaced_workers == 0
    assert await one.run(job(support.add, a=1, b=1)) == 2


async def test_job_without_a_function_ref_is_a_usage_error(one: ProcessExecutor) -> None:
    with pytest.raises(UsageError, match="FunctionRef"):
        await one.run(Job(fn=support.add, kwargs={"a": 1, "b": 2}, is_async=False))


def test_size_must_be_positive() -> None:
    with pytest.raises(UsageError, match="at least 1, got 0"):
        ProcessExecutor(size=0)


# -- crashes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("crash", "how"),
    [
        (support.exit_now, "exit code 3"),
        (support.segfault, "killed by SIGSEGV"),
        (support.kill_self, "killed by SIGKILL"),
    ],
    ids=["os._exit", "segfault", "sigkill"],
)
async def test_a_crash_fails_only_its_own_call(
    pool: ProcessExecutor, gate: FileGate, crash: Callable[[], None], how: str
) -> None:
    blocker, started = gate.job()
    sibling = asyncio.create_task(pool.run(blocker))
    try:
        sibling_pid = await gate.started(started)
        (victim,) = set(pool.worker_pids()) - {sibling_pid}
        with pytest.raises(WorkerDied, match=rf"worker process died \({how}\) while running tool"):
            await pool.run(job(crash))
    finally:
        gate.open()
    assert await sibling == sibling_pid
    await back_to_size(pool, replaced=1)
    assert victim not in pool.worker_pids()
    assert gone(victim)
    results = await asyncio.gather(*(pool.run(job(support.add, a=i, b=1)) for i in range(4)))
    assert results == [1, 2, 3, 4]


async def test_worker_killed_from_outside_while_running(
    pool: ProcessExecutor, gate: FileGate
) -> None:
    victim_job, victim_started = gate.job()
    sibling_job, sibling_started = gate.job()
    victim = asyncio.create_task(pool.run(victim_job))
    sibling = asyncio.create_task(pool.run(sibling_job))
    try:
        victim_pid = await gate.started(victim_started)
        sibling_pid = await gate.started(sibling_started)
        os.kill(victim_pid, signal.SIGKILL)
        with pytest.raises(WorkerDied, match=r"killed by SIGKILL"):
            await victim
        assert not sibling.done()
    finally:
        gate.open()
    assert await sibling == sibling_pid
    await back_to_size(pool, replaced=1)
    assert victim_pid not in pool.worker_pids()


async def test_idle_worker_killed_from_outside_is_replaced(
    pool: ProcessExecutor, gate: FileGate
) -> None:
    victim, survivor = pool.worker_pids()
    os.kill(victim, signal.SIGKILL)
    await back_to_size(pool, replaced=1)
    assert victim not in pool.worker_pids()
    assert survivor in pool.worker_pids()
    # Both workers take a call at the same time: the pool is whole again.
    jobs = [gate.job() for _ in range(2)]
    tasks = [asyncio.create_task(pool.run(j)) for j, _ in jobs]
    try:
        pids = {await gate.started(started) for _, started in jobs}
    finally:
        gate.open()
    assert set(await asyncio.gather(*tasks)) == pids == set(pool.worker_pids())


# -- timeouts and cancellation ---------------------------------------------------------------


async def test_timeout_kills_the_worker_so_the_work_stops(
    one: ProcessExecutor, tmp_path: Path
) -> None:
    started, release, evidence = tmp_path / "started", tmp_path / "release", tmp_path / "written"
    deadline: list[asyncio.Timeout] = []

    async def timed() -> None:
        async with asyncio.timeout(None) as cm:
            deadline.append(cm)
            await one.run(
                job(
                    support.announce_then_write,
                    started=str(started),
                    release=str(release),
                    evidence=str(evidence),
                )
            )

    task = asyncio.create_task(timed())
    await eventually(started.exists, timeout_s=10.0)
    pid = read_pid(started)
    deadline[0].reschedule(asyncio.get_running_loop().time())  # expire now, mid-call
    with pytest.raises(TimeoutError):
        await task
    await eventually(lambda: gone(pid), what=f"worker {pid} killed")
    release.write_text("")
    await asyncio.sleep(0.2)  # many times the tool's 5 ms poll: a live worker would have written
    assert not evidence.exists()
    await back_to_size(one, replaced=1, size=1)
    assert pid not in one.worker_pids()
    assert await one.run(job(support.add, a=1, b=1)) == 2


async def test_cancel_kills_the_worker_so_the_work_stops(
    one: ProcessExecutor, tmp_path: Path
) -> None:
    started, release, evidence = tmp_path / "started", tmp_path / "release", tmp_path / "written"
    task = asyncio.create_task(
        one.run(
            job(
                support.announce_then_write,
                started=str(started),
                release=str(release),
                evidence=str(evidence),
            )
        )
    )
    await eventually(started.exists, timeout_s=10.0)
    pid = read_pid(started)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # run() waits for the kill to take effect before it gives up the call.
    assert gone(pid)
    release.write_text("")
    await asyncio.sleep(0.2)  # many times the tool's 5 ms poll: a live worker would have written
    assert not evidence.exists()
    await back_to_size(one, replaced=1, size=1)
    assert await one.run(job(support.add, a=1, b=1)) == 2


async def test_many_calls_queue_for_a_small_pool(pool: ProcessExecutor, gate: FileGate) -> None:
    blockers = [gate.job() for _ in range(2)]
    blocked = [asyncio.create_task(pool.run(j)) for j, _ in blockers]
    try:
        for _, started in blockers:
            await gate.started(started)
        tasks = [asyncio.create_task(pool.run(job(support.add, a=i, b=1))) for i in range(200)]
        await eventually(lambda: pool.statistics().queued == 200)
        assert pool.statistics().in_flight == 2
    finally:
        gate.open()
    assert await asyncio.gather(*tasks) == [i + 1 for i in range(200)]
    await asyncio.gather(*blocked)
    stats = pool.statistics()
    assert is_idle(stats)
    assert (stats.workers, stats.replaced_workers) == (2, 0)


async def test_cancel_while_queued_does_not_leak_the_worker(gate: FileGate) -> None:
    async with aclosing(ProcessExecutor(size=1)) as one:
        blocker, started = gate.job()
        first = asyncio.create_task(one.run(blocker))
        try:
            await gate.started(started)
            queued = asyncio.create_task(one.run(job(support.add, a=1, b=1)))
            await eventually(lambda: one.statistics().queued == 1)
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert one.statistics().queued == 0
        finally:
            gate.open()
        await first
        async with asyncio.timeout(10):
            assert await one.run(job(support.add, a=1, b=2)) == 3
        stats = one.statistics()
        assert is_idle(stats)
        assert (stats.workers, stats.replaced_workers) == (1, 0)


async def test_cancel_just_as_the_worker_is_handed_over_does_not_leak_it(gate: FileGate) -> None:
    async with aclosing(ProcessExecutor(size=1)) as one:
        blocker, started = gate.job()
        waiting: list[asyncio.Task[Any]] = []

        async def finish_then_cancel_the_next() -> None:
            await one.run(blocker)
            # The worker took the queued call the moment it answered (from the protocol
            # callback); its awaiting task has not resumed yet, so the cancellation meets a
            # call already sent: the worker is killed and replaced, and nothing leaks.
            waiting[0].cancel()

        first = asyncio.create_task(finish_then_cancel_the_next())
        try:
            await gate.started(started)
            waiting.append(asyncio.create_task(one.run(job(support.add, a=1, b=1))))
            await eventually(lambda: one.statistics().queued == 1)
        finally:
            gate.open()
        await first
        with pytest.raises(asyncio.CancelledError):
            await waiting[0]
        async with asyncio.timeout(10):
            assert await one.run(job(support.add, a=1, b=2)) == 3
        stats = one.statistics()
        assert is_idle(stats)
        assert (stats.workers, stats.replaced_workers) == (1, 1)


async def test_statistics_count_running_calls(pool: ProcessExecutor, gate: FileGate) -> None:
    blocker, started = gate.job()
    task = asyncio.create_task(pool.run(blocker))
    try:
        await gate.started(started)
        stats = pool.statistics()
        assert (stats.in_flight, stats.queued, stats.workers) == (1, 0, 2)
    finally:
        gate.open()
    await task
    assert is_idle(pool.statistics())


# -- lifecycle -------------------------------------------------------------------------------


async def test_aclose_stops_idle_workers_and_is_idempotent() -> None:
    executor = ProcessExecutor(size=2)
    await executor.start()
    await executor.start()
    pids = executor.worker_pids()
    assert len(pids) == 2
    await executor.aclose()
    await executor.aclose()
    assert all(gone(pid) for pid in pids)
    assert executor.statistics().workers == 0
    with pytest.raises(ClosedError, match="process pool is closed"):
        await executor.run(job(support.add, a=1, b=1))
    with pytest.raises(ClosedError, match="process pool is closed"):
        await executor.start()


async def test_aclose_kills_busy_workers_and_fails_their_calls(gate: FileGate) -> None:
    executor = ProcessExecutor(size=1)
    blocker, started = gate.job()
    running = asyncio.create_task(executor.run(blocker))
    pid = await gate.started(started)
    queued = asyncio.create_task(executor.run(job(support.add, a=1, b=1)))
    await eventually(lambda: executor.statistics().queued == 1)
    await executor.aclose()
    with pytest.raises(WorkerDied, match="killed by SIGKILL"):
        await running
    with pytest.raises(WorkerDied, match="closed"):
        await queued
    assert gone(pid)
    assert executor.statistics().replaced_workers == 0


async def test_aclose_right_after_a_crash_leaves_no_process() -> None:
    executor = ProcessExecutor(size=1)
    with pytest.raises(WorkerDied):
        await executor.run(job(support.exit_now))
    # The replacement is starting now; closing must stop it too (the autouse fixture checks).
    assert executor.statistics().replaced_workers == 1
    await executor.aclose()
    assert executor.statistics().workers == 0


async def test_aclose_cancelled_midway_leaves_no_process() -> None:
    # Regression: aclose() cancelled while it waited for a replacement to stop left the other,
    # idle worker running, and a second aclose() returned at once ("already closing").
    executor = ProcessExecutor(size=2)
    with pytest.raises(WorkerDied):
        await executor.run(job(support.exit_now))
    pids = executor.worker_pids()
    closing = asyncio.create_task(executor.aclose())
    await asyncio.sleep(0)  # one loop iteration: aclose() runs up to its first await
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await executor.aclose()
    await eventually(lambda: all(gone(pid) for pid in pids), what="workers gone")


async def test_aclose_while_starting_leaves_no_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: start() set the state back to running after aclose(), and workers it was
    # still starting were left alive.
    monkeypatch.setenv("CORRAL_TEST_IMPORT", f"wait:{tmp_path / 'never'}")
    executor = ProcessExecutor(size=2, preload=[HOOK])
    starting = asyncio.create_task(executor.start())
    await eventually(lambda: executor.statistics().workers == 2, what="workers spawned")
    pids = executor.worker_pids()
    async with asyncio.timeout(10):
        await executor.aclose()
    with pytest.raises(ClosedError):
        await starting
    assert all(gone(pid) for pid in pids)
    with pytest.raises(ClosedError):
        await executor.run(job(support.add, a=1, b=1))


async def test_a_worker_that_dies_at_start_up_fails_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CORRAL_TEST_IMPORT", "exit")
    async with aclosing(ProcessExecutor(size=2, preload=[HOOK])) as executor:
        with pytest.raises(WorkerDied, match="exited at start-up"):
            await executor.start()
        assert executor.statistics().workers == 0
        with pytest.raises(WorkerDied, match="exited at start-up"):
            await executor.run(job(support.add, a=1, b=1))
