"""Run one planned batch: start each call when its predecessors have finished, one outcome each.

Each call is a future the batch owns: a thread executor's future, a task running an `async def`
tool, or a task running the call through its executor. The batch watches them with done-callbacks
and ends late ones with timers, rather than wrapping every call in a task of its own with
`asyncio.timeout`: that halves the scheduler's cost per call, which matters for batches of a
hundred fast tools. Structure is kept by hand: `run()` cancels whatever is unfinished and awaits
every task it started before it returns or re-raises, so no task of the batch outlives it. A
call's own failure is data (a `ToolResult`), never an exception that reaches its siblings.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import enum
import functools
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
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


class _BudgetTimeout(Exception):  # an internal signal, never seen by users
    """The batch deadline passed while a call waited for a budget slot."""


@dataclass(slots=True)
class _Node:
    prepared: Prepared
    pending: int
    future: asyncio.Future[Any] | None = None  # the call, while the batch waits for it
    timer: asyncio.TimerHandle | None = None
    deadline: float | None = None
    started_at: float | None = None
    result: ToolResult | None = None
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
        self._spawned: list[asyncio.Task[Any]] = []
        self._unsettled: set[Any] = set()  # executors that killed a worker for this batch
        self._ready: collections.deque[int] = collections.deque()
        self._draining = False
        self._unfinished = len(calls)
        self._all_done: asyncio.Future[None] = self._loop.create_future()

    async def run(self) -> list[ToolResult]:
        counters = self._counters
        counters.waiting += len(self._nodes)
        timer = None
        if self._deadline is not None:
            timer = self._loop.call_at(self._deadline, self._guarded, self._expire)
        try:
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
            if self._unfinished:
                await self._all_done
        finally:
            if timer is not None:
                timer.cancel()
            for node in self._nodes:
                self._abandon(node)
            await self._reap()
            for node in self._nodes:
                if node.counted:
                    node.counted = False
                    counters.waiting -= 1
        results = [node.result for node in self._nodes]
        assert all(r is not None for r in results), "a call of the batch has no outcome"
        return results  # type: ignore[return-value]

    async def _reap(self) -> None:
        """Wait for the batch's cancelled tasks to unwind and its killed workers to exit."""
        for settle in self._unsettled:
            await settle()
        while pending := [t for t in self._spawned if not t.done()]:
            try:
                await asyncio.wait(pending)
            except asyncio.CancelledError:
                for task in pending:  # cancelled again while reaping: press on, then re-raise
                    task.cancel()
                await asyncio.wait(pending)
                raise

    def _guarded(self, callback: Callable[..., None], *args: Any) -> None:
        # Timer and done-callbacks run outside any task: a bug there must fail the batch, not
        # vanish into the loop's exception handler and leave `run()` waiting forever.
        try:
            callback(*args)
        except BaseException as exc:
            self._break(exc)

    def _break(self, exc: BaseException) -> None:
        """Fail the batch with a bug met in a callback; let KeyboardInterrupt and kin through."""
        if not self._all_done.done():
            self._all_done.set_exception(exc)
        if not isinstance(exc, Exception):
            raise exc

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
        if node.result is not None or node.future is not None:
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
        if node.prepared.budgets:
            self._spawn(index, self._budgeted(index))
        else:
            self._launch(index)

    def _begin(self, index: int) -> None:
        """Mark call `index` as running from now (its budget slots held) and arm its timer."""
        node = self._nodes[index]
        self._uncount(node)
        deadline = node.deadline = self._call_deadline(node.prepared)
        node.started_at = time.perf_counter()
        if deadline is not None:
            node.timer = self._loop.call_at(deadline, self._guarded, self._time_out, index)

    def _launch(self, index: int) -> None:
        """Start call `index`, which needs no budget slot, on its executor."""
        node = self._nodes[index]
        prepared = node.prepared
        assert prepared.job is not None
        assert prepared.executor is not None
        self._begin(index)
        submit = getattr(prepared.executor, "submit", None)
        try:
            if submit is None:
                self._spawn(index, prepared.executor.run(prepared.job), node.deadline)
                return
            if node.deadline is None:
                future = submit(prepared.job)
            else:  # `async def` tools read their deadline from the task's context
                context = contextvars.copy_context()
                context.run(current_deadline.set, node.deadline)
                future = context.run(submit, prepared.job)
        except Exception as exc:  # the executor refused it (closed): this call's failure
            self._fail(index, exc, node.started_at, prepared)
            return
        if isinstance(future, asyncio.Task):
            self._spawned.append(future)
        node.future = future
        future.add_done_callback(functools.partial(self._on_future, index))

    def _spawn(
        self, index: int, coro: Coroutine[Any, Any, Any], deadline: float | None = None
    ) -> None:
        """Run `coro` as call `index` in a task the batch owns."""
        context = None
        if deadline is not None:
            context = contextvars.copy_context()
            context.run(current_deadline.set, deadline)
        task = self._loop.create_task(coro, context=context)
        self._spawned.append(task)
        self._nodes[index].future = task
        task.add_done_callback(functools.partial(self._on_future, index))

    async def _budgeted(self, index: int) -> Any:
        """Wait for the call's budget slots (under the batch deadline), then run it holding them."""
        node = self._nodes[index]
        prepared = node.prepared
        assert prepared.job is not None
        assert prepared.executor is not None
        held: list[Budget] = []
        try:
            try:
                async with asyncio.timeout_at(self._deadline):
                    for budget in prepared.budgets:
                        await budget.acquire()
                        held.append(budget)
            except TimeoutError:
                raise _BudgetTimeout from None
            self._begin(index)  # the timer it arms cancels this task
            current_deadline.set(node.deadline)
            return await prepared.executor.run(prepared.job)
        finally:
            for budget in reversed(held):
                budget.release()

    def _on_future(self, index: int, future: asyncio.Future[Any]) -> None:
        # A done-callback, outside any task: guarded as `_guarded` does, inline for speed.
        try:
            self._ended(index, future)
        except BaseException as exc:
            self._break(exc)

    def _ended(self, index: int, future: asyncio.Future[Any]) -> None:
        node = self._nodes[index]
        if node.future is not future:
            return  # already ended by its timer, fail_fast or the batch's cancellation
        node.future = None
        if node.timer is not None:
            node.timer.cancel()
            node.timer = None
        prepared = node.prepared
        mode = prepared.executor.name if prepared.executor is not None else None
        if future.cancelled():
            # Nobody here cancelled it (that would have cleared `node.future` first): the tool
            # raised CancelledError itself, say by awaiting a future someone else cancelled.
            # That is its own failure, like a tool's own TimeoutError.
            self._fail(index, asyncio.CancelledError(), node.started_at, prepared)
            return
        exc = future.exception()
        if isinstance(exc, _BudgetTimeout):
            info = self._timeout_info(prepared, "budget", self._deadline)
            self._complete(index, Status.TIMEOUT, info, None, None, mode)
        elif exc is not None:
            self._fail(index, exc, node.started_at, prepared)
        else:
            self._complete(index, Status.OK, None, future.result(), node.started_at, mode)

    def _time_out(self, index: int) -> None:
        node = self._nodes[index]
        node.timer = None
        prepared = node.prepared
        mode = prepared.executor.name if prepared.executor is not None else None
        info = self._timeout_info(prepared, "run", node.deadline)
        self._abandon(node)
        self._complete(index, Status.TIMEOUT, info, None, node.started_at, mode)

    def _abandon(self, node: _Node) -> None:
        """Stop waiting for a call.

        A queued call never starts; a running task is cancelled (a process call's worker is
        killed); a thread runs on alone.
        """
        if node.timer is not None:
            node.timer.cancel()
            node.timer = None
        future, node.future = node.future, None
        if future is not None and future.cancel():
            settle = getattr(node.prepared.executor, "settle", None)
            if settle is not None:
                self._unsettled.add(settle)

    def _uncount(self, node: _Node) -> None:
        if node.counted:
            node.counted = False
            self._counters.waiting -= 1

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
        self._uncount(node)
        self._unfinished -= 1
        if not self._unfinished and not self._all_done.done():
            self._all_done.set_result(None)
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
            self._abandon(node)
            started = node.started_at
            mode = node.prepared.executor.name if started and node.prepared.executor else None
            info = ErrorInfo("Cancelled", self._failure)
            self._complete(index, Status.CANCELLED, info, None, started, mode)

    def _expire(self) -> None:
        self._expired = True
        waiting = [
            i for i, node in enumerate(self._nodes) if node.result is None and node.future is None
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
