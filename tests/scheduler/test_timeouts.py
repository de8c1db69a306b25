"""Timeouts per tool, per call and per batch; what a call that never started reports.

Calls that must time out wait on an event nobody sets, so only the deadline can end them; the
deadlines are short (50 ms) and nothing else depends on wall-clock time.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

import corral
from corral import Status, ToolRegistry
from corral.testing import Gate
from tests.scheduler.helpers import MakeRegistry, call, statuses

SHORT = 0.05
LONG = 30.0


async def forever() -> None:
    await asyncio.Event().wait()


def message(result: corral.ToolResult) -> str:
    assert result.error is not None, result
    return result.error.message


async def test_a_tool_timeout_ends_the_call_with_status_timeout(registry: ToolRegistry) -> None:
    cancelled = asyncio.Event()

    @registry.tool(read_only=True, timeout=SHORT)
    async def hang() -> None:
        try:
            await forever()
        finally:
            cancelled.set()

    (result,) = await registry.execute([call("a", "hang")])
    assert result.status is Status.TIMEOUT
    assert result.error is not None
    assert result.error.type == "TimeoutError"
    assert message(result) == f"tool 'hang' timed out after {SHORT:g} s (tool timeout)"
    assert result.started_at is not None
    assert cancelled.is_set()  # the coroutine itself was cancelled, not left behind


async def test_a_call_timeout_overrides_the_tools(registry: ToolRegistry) -> None:
    @registry.tool(read_only=True, timeout=LONG)
    async def hang() -> None:
        await forever()

    (result,) = await registry.execute([call("a", "hang", timeout=SHORT)])
    assert result.status is Status.TIMEOUT
    assert message(result) == f"tool 'hang' timed out after {SHORT:g} s (call timeout)"


async def test_a_call_gets_the_batch_time_left_when_that_is_shorter(registry: ToolRegistry) -> None:
    @registry.tool(read_only=True, timeout=LONG)
    async def hang() -> None:
        await forever()

    (result,) = await registry.execute([call("a", "hang")], timeout=SHORT)
    assert result.status is Status.TIMEOUT
    assert message(result) == f"the batch timeout of {SHORT:g} s expired while it ran"


async def test_a_calls_own_timeout_wins_when_it_is_shorter(registry: ToolRegistry) -> None:
    @registry.tool(read_only=True, timeout=SHORT)
    async def hang() -> None:
        await forever()

    @registry.tool(read_only=True)
    async def quick() -> str:
        return "done"

    results = await registry.execute([call("a", "hang"), call("b", "quick")], timeout=LONG)
    assert statuses(results) == {"a": "timeout", "b": "ok"}
    assert message(results[0]).endswith("(tool timeout)")


async def test_a_calls_clock_starts_when_it_starts(registry: ToolRegistry) -> None:
    # u2 waits (undeclared: one at a time) while u1 uses up its whole timeout; u2 still gets its
    # own full timeout afterwards. Undeclared ordering does not skip, so u2 runs.
    async def undeclared(hang: bool) -> str:
        if hang:
            await forever()
        await asyncio.sleep(0)
        return "ran"

    registry.register(undeclared, timeout=SHORT)
    results = await registry.execute(
        [call("u1", "undeclared", hang=True), call("u2", "undeclared", hang=False)]
    )
    assert statuses(results) == {"u1": "timeout", "u2": "ok"}


async def test_a_calls_clock_excludes_its_wait_for_a_budget_slot(registry: ToolRegistry) -> None:
    @registry.tool(read_only=True, limit=1, timeout=SHORT)
    async def one_at_a_time(hang: bool) -> str:
        if hang:
            await forever()
        return "ran"

    results = await registry.execute(
        [call("a", "one_at_a_time", hang=True), call("b", "one_at_a_time", hang=False)]
    )
    assert statuses(results) == {"a": "timeout", "b": "ok"}


async def test_a_timed_out_call_skips_its_successors(registry: ToolRegistry) -> None:
    @registry.tool(writes="memory:k", timeout=SHORT)
    async def put(hang: bool) -> None:
        if hang:
            await forever()

    results = await registry.execute([call("a", "put", hang=True), call("b", "put", hang=False)])
    assert statuses(results) == {"a": "timeout", "b": "skipped"}
    assert message(results[1]) == "call 'a' on memory:k did not succeed (timeout)"


async def test_calls_that_never_started_say_what_they_waited_for(registry: ToolRegistry) -> None:
    @registry.tool(read_only=True)
    async def slow() -> None:
        await forever()

    @registry.tool(read_only=True)
    async def quick() -> None:
        pass

    @registry.tool(read_only=True)
    async def after() -> None:
        pass

    results = await registry.execute(
        [
            call("slow", "slow"),
            call("quick", "quick"),
            call("both", "after", depends_on=["quick", "slow"]),
            call("chained", "after", depends_on=["both"]),
        ],
        timeout=SHORT,
    )
    assert statuses(results) == {
        "slow": "timeout",
        "quick": "ok",
        "both": "timeout",
        "chained": "timeout",
    }
    prefix = f"the batch timeout of {SHORT:g} s expired"
    # Only the predecessors that had not finished are named ('quick' had).
    assert message(results.by_id("both")) == f"{prefix} while waiting for 'slow'"
    assert message(results.by_id("chained")) == f"{prefix} while waiting for 'both'"
    assert results.by_id("both").started_at is None


async def test_a_call_waiting_for_a_budget_slot_at_the_deadline_says_so(
    registry: ToolRegistry,
) -> None:
    gate = Gate()

    @registry.tool(read_only=True, limit=1)
    async def single(n: int) -> None:
        await gate.passage()
        await forever()

    results = await registry.execute(
        [call("a", "single", n=1), call("b", "single", n=2)], timeout=SHORT
    )
    assert statuses(results) == {"a": "timeout", "b": "timeout"}
    assert gate.arrived == 1
    assert message(results[1]).endswith("expired while it waited for a budget slot")
    assert results[1].started_at is None


async def test_fail_fast_at_the_batch_deadline_reports_every_call_as_timed_out(
    registry: ToolRegistry,
) -> None:
    # Regression: the first call to report its timeout "failed first" and the calls the same
    # deadline had ended came back `cancelled`.
    @registry.tool(read_only=True)
    async def hang(n: int) -> None:
        await forever()

    @registry.tool(writes="memory:k")
    async def put(n: int) -> None:
        await forever()

    calls = [
        call("a", "hang", n=1),
        call("b", "hang", n=2),
        call("w1", "put", n=1),
        call("w2", "put", n=2),
    ]
    results = await registry.execute(calls, timeout=SHORT, policy="fail_fast")
    assert statuses(results) == {"a": "timeout", "b": "timeout", "w1": "timeout", "w2": "timeout"}
    assert message(results[3]).endswith("while waiting for 'w1'")


async def test_fail_fast_on_a_calls_own_timeout_cancels_the_rest(registry: ToolRegistry) -> None:
    gate = Gate()

    @registry.tool(read_only=True)
    async def hold() -> None:
        await gate.passage()
        await forever()

    @registry.tool(read_only=True, timeout=SHORT)
    async def too_slow() -> None:
        await gate.wait_for(1)
        await forever()

    results = await registry.execute(
        [call("hold", "hold"), call("slow", "too_slow")], policy="fail_fast"
    )
    assert statuses(results) == {"hold": "cancelled", "slow": "timeout"}
    assert message(results[0]) == "call 'slow' (too_slow) failed first (timeout): fail_fast"


async def test_a_thread_that_times_out_comes_back_on_time_and_counts_until_it_ends(
    make_registry: MakeRegistry,
) -> None:
    reg = make_registry()
    release = threading.Event()

    @reg.tool(read_only=True, timeout=SHORT)
    def blocking() -> str:
        release.wait(10)
        return "late"

    (result,) = await reg.execute([call("a", "blocking")])
    assert result.status is Status.TIMEOUT
    assert result.mode == "thread"
    # The thread cannot be killed: it is still running, and still counted.
    assert reg.statistics().in_flight == 1
    release.set()  # the fixture waits (bounded) for the thread to end and the registry to idle


@pytest.mark.parametrize("bad", [0, -1, "1", float("nan")])
async def test_a_bad_batch_timeout_is_a_usage_error(registry: ToolRegistry, bad: object) -> None:
    with pytest.raises(corral.UsageError, match="timeout must be a positive number of seconds"):
        await registry.execute([], timeout=bad)  # type: ignore[arg-type]


async def test_a_running_call_can_read_its_own_deadline(registry: ToolRegistry) -> None:
    from corral._deadline import remaining_s

    @registry.tool(read_only=True)
    async def how_long() -> float | None:
        return remaining_s()

    results = await registry.execute(
        [
            corral.ToolCall("own", "how_long", {}, timeout=LONG),
            corral.ToolCall("none", "how_long", {}),
        ]
    )
    own, none = results
    assert own.value is not None
    assert LONG - 5 < own.value <= LONG
    assert none.value is None
    (batch,) = await registry.execute([corral.ToolCall("b", "how_long", {})], timeout=LONG / 2)
    assert batch.value is not None
    assert LONG / 2 - 5 < batch.value <= LONG / 2
