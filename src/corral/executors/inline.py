"""Run calls on the event loop: `async def` tools are awaited, plain functions called in place."""

from __future__ import annotations

import asyncio
from typing import Any

from corral.executors.base import ExecutorStatistics, Job, State, ensure_open, future_safe

__all__ = ["InlineExecutor"]


class InlineExecutor:
    """Await coroutine functions in the caller's task; call plain functions on the loop.

    A plain function in this mode blocks the event loop while it runs: choose it only for
    functions that return in microseconds.
    """

    name = "async"

    def __init__(self) -> None:
        self._state = State.RUNNING
        self._in_flight = 0

    async def run(self, job: Job) -> Any:
        """Run `job` in the calling task. Cancellation-safe: the coroutine receives it."""
        ensure_open(self._state, "the async executor")
        self._in_flight += 1
        try:
            if job.is_async:
                return await job.fn(**job.kwargs)
            return job.fn(**job.kwargs)
        finally:
            self._in_flight -= 1

    def submit(self, job: Job) -> asyncio.Future[Any]:
        """Start `job` and return its future.

        A coroutine function runs in a new task (cancel the future to cancel the call); a plain
        function runs right here and the future is already done. The scheduler uses this rather
        than `run` to spare a wrapper task per call.
        """
        ensure_open(self._state, "the async executor")
        loop = asyncio.get_running_loop()
        if job.is_async:
            return loop.create_task(self._await(job))
        future: asyncio.Future[Any] = loop.create_future()
        try:
            future.set_result(job.fn(**job.kwargs))
        except KeyboardInterrupt:
            raise  # the user's Ctrl-C, delivered while the tool ran on this thread
        except BaseException as exc:  # SystemExit from a tool fails its own call
            future.set_exception(future_safe(exc))
        return future

    async def _await(self, job: Job) -> Any:
        self._in_flight += 1
        try:
            return await job.fn(**job.kwargs)
        finally:
            self._in_flight -= 1

    def statistics(self) -> ExecutorStatistics:
        """Return the number of calls running on the loop."""
        return ExecutorStatistics(self.name, in_flight=self._in_flight, queued=0)

    async def aclose(self) -> None:
        """Refuse new calls. Idempotent; running calls belong to their batches."""
        self._state = State.CLOSED
