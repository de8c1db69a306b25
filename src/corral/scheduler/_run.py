"""Run one planned batch: start each call when its predecessors have finished, one outcome each.

Structured: every call runs in a task of the batch's `TaskGroup`, so when `run()` returns or is
cancelled no task of the batch is left. A call's own failure is data (a `ToolResult`), never an
exception that reaches its siblings.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from corral._deadline import current_deadline
from corral.executors.base import Executor, Job
from corral.scheduler._budget import Budget
from corral.scheduler._outcome import ErrorInfo, Status, ToolResult
from corral.scheduler._plan import Plan

__all__ = ["BatchCounters", "Policy", "Prepared", "run_batch"]


class Policy(enum.StrEnum):
    """What a failed call does to the rest of its batch."""

    BEST_EFFORT = "best_effort"
    """Every call that can run, runs; a call whose predecessor failed is skipped."""
    FAIL_FAST = "fail_fast"
    """The first failure cancels every other call; they come back `cancelled`.

    Calls that could not start at all (bad arguments, an unknown tool or dependency) keep their own
    `error`, and the batch deadline ends every unfinished call as `timeout`: it fails them all at
    once rather than one first.
    """


@dataclass(slots=True)
class Prepared:
    """One call, ready to run or already failed before it could start."""

    id: str
    name: str
    job: Job | None = None
    executor: Executor | None = None
    timeout_s: float | None = None
    timeout_source: str = ""
    budgets: tuple[Budget, ...] = ()
    error: ErrorInfo | None = None


@dataclass(slots=True)
class BatchCounters:
    """Calls of all running batches of one registry that wait for a predecessor or a budget."""

    waiting: int = 0


@dataclass(slots=True)
class _Node:
    prepared: Prepared
    pending: int
    task: asyncio.Task[None] | None = None
    result: ToolResult | None = None
    cancel_requested: bool = False
    counted: bool = field(default=True)


async def run_batch(
    calls: Sequence[Prepared],
    plan: Plan,
    *,
    policy: Policy,
    timeout_s: float | None,
    counters: BatchCounters,
    on_result: Callable[[ToolResult], None] | None = None,
) -> list[ToolResult]:
    """Run `calls` in the order `plan` allows and return one result per call, in call order.

    Cancellation-safe: cancelling the caller cancels every running call and re-raises.
    """
    batch = _Batch(calls, plan, policy, timeout_s, counters, on_result)
    return await batch.run()


class _Batch:
    def __init__(
        self,
        calls: Sequence[Prepared],
        plan: Plan,
        policy: Policy,
        timeout_s: float | None,
        counters: BatchCounters,
        on_result: Callable[[ToolResult], None] | None,
    ) -> None:
        self._plan = plan
        self._policy = policy
        self._counters = counters
        self._on_result = on_result
        self._nodes = [_Node(c, len(plan.incoming[i])) for i, c in enumerate(calls)]
        self._loop = asyncio.get_running_loop()
        self._deadline = None if timeout_s is None else self._loop.time() + timeout_s
        self._timeout_s = timeout_s
        self._expired = False
        self._failure: str | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._ready: collections.deque[int] = collections.deque()
        self._draining = False

    async def run(self) -> list[ToolResult]:
        counters = self._counters
        counters.waiting += len(self._nodes)
        timer = None
        if self._deadline is not None:
            timer = self._loop.call_at(self._deadline, self._expire)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._draining = True  # record every up-front failure before anything starts
                failed: list[tuple[int, Status, ErrorInfo]] = []
                for index, node in enumerate(self._nodes):
                    error = self._plan.errors.get(index)
                    if node.prepared.error is not None or error is not None:
                        info = node.prepared.error or ErrorInfo("DependencyError", error or "")
                        failed.append((index, Status.ERROR, info))
                self._complete_all(failed)
                self._draining = False
                self._ready.extend(i for i, n in enumerate(self._nodes) if n.pending == 0)
                self._drain()
        finally:
            self._tg = None
            if timer is not None:
                timer.cancel()
            for node in self._nodes:
                if node.counted:
                    node.counted = False
                    counters.waiting -= 1
        for index, node in enumerate(self._nodes):
            if node.result is None and node.cancel_requested:
                # Cancelled by fail_fast before its task took its first step.
                self._complete(index, Status.CANCELLED, ErrorInfo("Cancelled", self._failure or ""))
        results = [node.result for node in self._nodes]
        assert all(r is not None for r in results), "a call of the batch has no outcome"
        return results  # type: ignore[return-value]

    # -- scheduling ----------------------------------------------------------------------------

    def _drain(self) -> None:
        # A worklist, not recursion: a chain of a thousand skipped calls must not overflow the
        # stack, and completions inside `_start` only add to the list.
        if self._draining:
            return
        self._draining = True
        try:
            while self._ready:
                self._start(self._ready.popleft())
        finally:
            self._draining = False

    def _start(self, index: int) -> None:
        node = self._nodes[index]
        if node.result is not None or node.task is not None:
            return
        if self._expired:
            self._complete(index, Status.TIMEOUT, self._batch_timeout_info(index))
            return
        if self._failure is not None:
            self._complete(index, Status.CANCELLED, ErrorInfo("Cancelled", self._failure))
            return
        reason = self._failed_predecessor(index)
        if reason is not None:
            self._complete(index, Status.SKIPPED, ErrorInfo("Skipped", reason))
            return
        assert self._tg is not None
        coro = self._run_one(index)
        try:
            node.task = self._tg.create_task(coro)
        except RuntimeError:
            # The TaskGroup is shutting down because the batch is being cancelled, yet a call
            # finished and readied this one: a tool that swallowed its CancelledError and
            # returned. Start nothing; the batch raises CancelledError, not this RuntimeError.
            coro.close()
            self._complete(
                index, Status.CANCELLED, ErrorInfo("Cancelled", "the batch was cancelled")
            )

    def _failed_predecessor(self, index: int) -> str | None:
        for edge in self._plan.incoming[index]:
            if not edge.propagates_failure:
                continue
            before = self._nodes[edge.before].result
            assert before is not None
            if before.status is not Status.OK:
                via = f" on {edge.resource}" if edge.resource else " (depends_on)"
                return f"call {before.id!r}{via} did not succeed ({before.status.value})"
        return None

    def _complete(
        self,
        index: int,
        status: Status,
        error: ErrorInfo | None = None,
        value: Any = None,
        started_at: float | None = None,
        mode: str | None = None,
    ) -> None:
        node = self._nodes[index]
        if node.result is not None:
            return
        prepared = node.prepared
        node.result = ToolResult(
            id=prepared.id,
            name=prepared.name,
            status=status,
            value=value,
            error=error,
            started_at=started_at,
            finished_at=time.perf_counter() if started_at is not None else None,
            mode=mode,
        )
        self._settle(index)

    def _complete_all(self, outcomes: Sequence[tuple[int, Status, ErrorInfo]]) -> None:
        # Record every outcome before any of them acts: otherwise the first one's fail_fast (or
        # its readied successors) would overwrite the others' own errors with `cancelled`.
        for index, status, error in outcomes:
            node = self._nodes[index]
            node.result = ToolResult(node.prepared.id, node.prepared.name, status, error=error)
        for index, _, _ in outcomes:
            self._settle(index)

    def _settle(self, index: int) -> None:
        """Act on the outcome just recorded for call `index`: report it, ready its successors."""
        node = self._nodes[index]
        result = node.result
        assert result is not None
        if node.counted:
            node.counted = False
            self._counters.waiting -= 1
        if self._on_result is not None:
            self._on_result(result)
        if (
            result.status is not Status.OK
            and self._policy is Policy.FAIL_FAST
            and self._failure is None
            and not self._expired  # the batch deadline is every call's timeout, not a failure
        ):
            self._fail_fast(node.prepared, result.status)
        for edge in self._plan.outgoing[index]:
            succ = self._nodes[edge.after]
            succ.pending -= 1
            if succ.pending == 0:
                self._ready.append(edge.after)
        self._drain()

    def _fail_fast(self, failed: Prepared, status: Status) -> None:
        self._failure = (
            f"call {failed.id!r} ({failed.name}) failed first ({status.value}): fail_fast"
        )
        for index, node in enumerate(self._nodes):
            if node.result is not None:
                continue
            if node.task is not None:
                node.cancel_requested = True
                node.task.cancel()
            else:
                self._complete(index, Status.CANCELLED, ErrorInfo("Cancelled", self._failure))

    def _expire(self) -> None:
        self._expired = True
        waiting = [
            i for i, node in enumerate(self._nodes) if node.result is None and node.task is None
        ]
        # Describe them all before settling any: a settled call readies its successors, which
        # would then be reported as waiting for nothing.
        self._complete_all([(i, Status.TIMEOUT, self._batch_timeout_info(i)) for i in waiting])

    def _batch_timeout_info(self, index: int) -> ErrorInfo:
        waits = [
            self._plan.ids[e.before]
            for e in self._plan.incoming[index]
            if self._nodes[e.before].result is None
        ]
        detail = f" while waiting for {', '.join(map(repr, waits))}" if waits else ""
        return ErrorInfo(
            "TimeoutError", f"the batch timeout of {self._timeout_s:g} s expired{detail}"
        )

    # -- one call ------------------------------------------------------------------------------

    async def _run_one(self, index: int) -> None:
        node = self._nodes[index]
        prepared = node.prepared
        assert prepared.job is not None
        assert prepared.executor is not None
        started_at: float | None = None
        phase = "budget"
        expired: asyncio.Timeout | None = None
        held: list[Budget] = []
        try:
            try:
                if prepared.budgets:
                    # Waiting for a slot counts against the batch, not against the call.
                    async with asyncio.timeout_at(self._deadline) as expired:
                        for budget in prepared.budgets:
                            await budget.acquire()
                            held.append(budget)
                if node.counted:
                    node.counted = False
                    self._counters.waiting -= 1
                phase = "run"
                deadline = self._call_deadline(prepared)
                current_deadline.set(deadline)  # this task's own context: the tool may read it
                started_at = time.perf_counter()
                if deadline is None:  # no timer to arm: the common case costs nothing extra
                    value = await prepared.executor.run(prepared.job)
                else:
                    async with asyncio.timeout_at(deadline) as expired:
                        value = await prepared.executor.run(prepared.job)
            finally:
                for budget in reversed(held):
                    budget.release()
        except TimeoutError as exc:
            if expired is None or not expired.expired():
                self._fail(index, exc, started_at, prepared)  # the tool raised it itself
                return
            self._complete(
                index,
                Status.TIMEOUT,
                self._timeout_info(prepared, phase, expired.when()),
                started_at=started_at,
                mode=prepared.executor.name,
            )
            return
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            assert task is not None
            if node.cancel_requested and task.uncancel() == 0:
                self._complete(
                    index,
                    Status.CANCELLED,
                    ErrorInfo("Cancelled", self._failure or "cancelled"),
                    started_at=started_at,
                    mode=prepared.executor.name,
                )
                return
            if task.cancelling() == 0:
                # Nobody cancelled this task: the tool raised CancelledError itself (say, it
                # awaited a future someone else cancelled). That is its failure, like a tool's own
                # TimeoutError; re-raising would end the task with no outcome for the call.
                self._fail(index, exc, started_at, prepared)
                return
            raise
        except Exception as exc:
            self._fail(index, exc, started_at, prepared)
            return
        self._complete(
            index, Status.OK, value=value, started_at=started_at, mode=prepared.executor.name
        )

    def _call_deadline(self, prepared: Prepared) -> float | None:
        if prepared.timeout_s is None:
            return self._deadline
        own = self._loop.time() + prepared.timeout_s
        return own if self._deadline is None else min(own, self._deadline)

    def _timeout_info(self, prepared: Prepared, phase: str, when: float | None) -> ErrorInfo:
        batch_expired = self._deadline is not None and when is not None and when >= self._deadline
        if batch_expired or prepared.timeout_s is None:
            where = "while it waited for a budget slot" if phase == "budget" else "while it ran"
            return ErrorInfo(
                "TimeoutError", f"the batch timeout of {self._timeout_s:g} s expired {where}"
            )
        return ErrorInfo(
            "TimeoutError",
            f"tool {prepared.name!r} timed out after {prepared.timeout_s:g} s "
            f"({prepared.timeout_source})",
        )

    def _fail(
        self, index: int, exc: BaseException, started_at: float | None, prepared: Prepared
    ) -> None:
        remote_type = getattr(exc, "remote_type", None)
        info = ErrorInfo(
            remote_type or type(exc).__name__,
            str(exc) or type(exc).__name__,
            "".join(traceback.format_exception(exc)),
        )
        mode = prepared.executor.name if prepared.executor is not None else None
        self._complete(index, Status.ERROR, info, started_at=started_at, mode=mode)
