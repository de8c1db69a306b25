"""Run calls on the event loop: `async def` tools are awaited, plain functions called in place."""

from __future__ import annotations

from typing import Any

from corral.executors.base import ExecutorStatistics, Job, State, ensure_open

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

    def statistics(self) -> ExecutorStatistics:
        """Return the number of calls running on the loop."""
        return ExecutorStatistics(self.name, in_flight=self._in_flight, queued=0)

    async def aclose(self) -> None:
        """Refuse new calls. Idempotent; running calls belong to their batches."""
        self._state = State.CLOSED
