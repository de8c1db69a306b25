"""Policies: best_effort skips the calls after a failure on their resource; fail_fast cancels.

Overlap is proven with a Gate, order with a Timeline of start/end events; no sleeps decide anything.
"""

from __future__ import annotations

import asyncio

import pytest

from corral import ToolRegistry
from corral.testing import Gate
from tests.scheduler.helpers import call, statuses
from tests.support import Timeline


async def yield_a_few(times: int = 3) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


# -- best_effort: skips ------------------------------------------------------------------------


@pytest.fixture
def flaky(registry: ToolRegistry) -> Timeline:
    """Register `put`/`get` on memory:{key} that fail when asked to; return their timeline."""
    timeline = Timeline()

    @registry.tool(writes="memory:{key}")
    async def put(key: str, tag: str, fail: bool = False) -> str:
        with timeline.span(tag):
            await yield_a_few()
            if fail:
                raise ValueError(f"{tag} failed")
        return tag

    @registry.tool(reads="memory:{key}")
    async def get(key: str, tag: str, fail: bool = False) -> str:
        with timeline.span(tag):
            await yield_a_few()
            if fail:
                raise ValueError(f"{tag} failed")
        return tag

    return timeline


async def test_a_failed_write_skips_later_calls_on_its_resource(
    registry: ToolRegistry, flaky: Timeline
) -> None:
    results = await registry.execute(
        [
            call("w1", "put", key="k", tag="w1", fail=True),
            call("other", "put", key="j", tag="other"),
            call("r1", "get", key="k", tag="r1"),
            call("w2", "put", key="k", tag="w2"),
        ]
    )
    assert statuses(results) == {"w1": "error", "other": "ok", "r1": "skipped", "w2": "skipped"}
    r1, w2 = results.by_id("r1"), results.by_id("w2")
    assert r1.error is not None
    assert w2.error is not None
    assert r1.error.type == "Skipped"
    assert r1.error.message == "call 'w1' on memory:k did not succeed (error)"
    assert "did not succeed" in w2.error.message
    assert not flaky.has_started("r1")
    assert not flaky.has_started("w2")
    assert r1.started_at is None


async def test_skips_propagate_along_a_chain_across_resources(
    registry: ToolRegistry, flaky: Timeline
) -> None:
    @registry.tool(reads="memory:{src}", writes="memory:{dst}")
    async def copy(src: str, dst: str) -> None:
        pass

    results = await registry.execute(
        [
            call("w", "put", key="a", tag="w", fail=True),
            call("copy", "copy", src="a", dst="b"),  # skipped: w failed on memory:a
            call("read-b", "get", key="b", tag="read-b"),  # skipped: copy was skipped
            call("read-c", "get", key="c", tag="read-c"),
        ]
    )
    assert statuses(results) == {
        "w": "error",
        "copy": "skipped",
        "read-b": "skipped",
        "read-c": "ok",
    }
    assert results.by_id("read-b").content() == (
        "skipped: Skipped: call 'copy' on memory:b did not succeed (skipped)"
    )


async def test_a_failed_reader_skips_the_writer_after_it(
    registry: ToolRegistry, flaky: Timeline
) -> None:
    results = await registry.execute(
        [
            call("r1", "get", key="k", tag="r1", fail=True),
            call("r2", "get", key="k", tag="r2"),
            call("w", "put", key="k", tag="w"),
        ]
    )
    assert statuses(results) == {"r1": "error", "r2": "ok", "w": "skipped"}


async def test_undeclared_ordering_does_not_skip(registry: ToolRegistry) -> None:
    async def undeclared(fail: bool) -> str:
        if fail:
            raise ValueError("nope")
        return "ran"

    registry.register(undeclared)
    results = await registry.execute(
        [call("u1", "undeclared", fail=True), call("u2", "undeclared", fail=False)]
    )
    assert statuses(results) == {"u1": "error", "u2": "ok"}


async def test_depends_on_a_failed_call_skips(registry: ToolRegistry, flaky: Timeline) -> None:
    results = await registry.execute(
        [
            call("a", "put", key="x", tag="a", fail=True),
            call("b", "put", key="y", tag="b", depends_on=["a"]),
            call("c", "put", key="z", tag="c"),
        ]
    )
    assert statuses(results) == {"a": "error", "b": "skipped", "c": "ok"}
    assert results[1].error is not None
    assert results[1].error.message == "call 'a' (depends_on) did not succeed (error)"


async def test_unknown_and_self_dependencies_are_errors_and_skip_downstream(
    registry: ToolRegistry, flaky: Timeline
) -> None:
    results = await registry.execute(
        [
            call("a", "put", key="x", tag="a", depends_on=["ghost"]),
            call("b", "put", key="x", tag="b"),  # waits for a on memory:x: skipped
            call("c", "put", key="y", tag="c", depends_on=["c"]),
            call("d", "get", key="y", tag="d"),  # waits for c on memory:y: skipped
            call("e", "get", key="z", tag="e"),
        ]
    )
    assert statuses(results) == {
        "a": "error",
        "b": "skipped",
        "c": "error",
        "d": "skipped",
        "e": "ok",
    }
    a, c = results.by_id("a"), results.by_id("c")
    assert a.error is not None
    assert c.error is not None
    assert a.error.type == "DependencyError"
    assert a.error.message == "depends_on names 'ghost', which is not a call of this batch"
    assert c.error.message == "call 'c' depends on itself"
    assert flaky.started() == ["e"]


async def test_a_dependency_cycle_errors_its_members_and_skips_downstream(
    registry: ToolRegistry, flaky: Timeline
) -> None:
    results = await registry.execute(
        [
            call("a", "put", key="x", tag="a", depends_on=["b"]),
            call("b", "put", key="y", tag="b", depends_on=["a"]),
            call("c", "get", key="z", tag="c", depends_on=["b"]),
            call("d", "get", key="z", tag="d"),
        ]
    )
    assert statuses(results) == {"a": "error", "b": "error", "c": "skipped", "d": "ok"}
    for result in results[:2]:
        assert result.error is not None
        assert result.error.message == "depends_on forms a cycle among calls 'a', 'b'"


async def test_results_carry_the_plan(registry: ToolRegistry, flaky: Timeline) -> None:
    calls = [call("a", "put", key="k", tag="a"), call("b", "get", key="k", tag="b")]
    results = await registry.execute(calls)
    assert results.plan is not None
    assert results.plan.ids == ("a", "b")
    assert [(e.before, e.after) for e in results.plan.edges] == [(0, 1)]


# -- fail_fast ---------------------------------------------------------------------------------


async def test_fail_fast_cancels_running_calls_for_real_and_waiting_ones(
    registry: ToolRegistry,
) -> None:
    gate = Gate()
    seen_cancel: list[str] = []

    @registry.tool(writes="memory:{key}")
    async def hold(key: str, tag: str) -> None:
        try:
            await gate.passage()
            await asyncio.Event().wait()  # never returns on its own
        except asyncio.CancelledError:
            seen_cancel.append(tag)
            raise

    @registry.tool(read_only=True)
    async def fail_when_all_run(count: int) -> None:
        await gate.wait_for(count)
        raise RuntimeError("first failure")

    calls = [
        call("h1", "hold", key="a", tag="h1"),
        call("h2", "hold", key="b", tag="h2"),
        call("queued", "hold", key="a", tag="queued"),  # waits for h1: never starts
        call("boom", "fail_when_all_run", count=2),
    ]
    async with asyncio.timeout(5):
        results = await registry.execute(calls, policy="fail_fast")
    assert statuses(results) == {
        "h1": "cancelled",
        "h2": "cancelled",
        "queued": "cancelled",
        "boom": "error",
    }
    assert sorted(seen_cancel) == ["h1", "h2"]
    for result in results.by_id("h1"), results.by_id("queued"):
        assert result.error is not None
        assert result.error.message == (
            "call 'boom' (fail_when_all_run) failed first (error): fail_fast"
        )
    assert results.by_id("h1").started_at is not None
    assert results.by_id("queued").started_at is None


async def test_fail_fast_with_no_failure_runs_everything(
    registry: ToolRegistry, flaky: Timeline
) -> None:
    calls = [call(t, "put", key="k", tag=t) for t in ("a", "b", "c")]
    results = await registry.execute(calls, policy="fail_fast")
    assert results.ok


async def test_fail_fast_after_a_failure_cancels_rather_than_skips(
    registry: ToolRegistry, flaky: Timeline
) -> None:
    results = await registry.execute(
        [
            call("a", "put", key="k", tag="a", fail=True),
            call("b", "put", key="k", tag="b"),
            call("c", "put", key="other", tag="c", depends_on=["b"]),
        ],
        policy="fail_fast",
    )
    assert statuses(results) == {"a": "error", "b": "cancelled", "c": "cancelled"}


async def test_fail_fast_keeps_every_up_front_error(
    registry: ToolRegistry, flaky: Timeline
) -> None:
    # Regression: the first up-front error cancelled the other calls that could never run,
    # hiding their own errors (bad arguments, unknown tool) behind "cancelled".
    results = await registry.execute(
        [
            call("bad", "put", key="k"),  # missing `tag`
            call("missing", "nope"),
            call("cycle", "get", key="j", tag="cycle", depends_on=["cycle"]),
            call("fine", "get", key="j", tag="fine"),
        ],
        policy="fail_fast",
    )
    assert statuses(results) == {
        "bad": "error",
        "missing": "error",
        "cycle": "error",
        "fine": "cancelled",
    }
    assert [r.error.type for r in results if r.error] == [
        "ToolArgumentsInvalid",
        "ToolNotFound",
        "DependencyError",
        "Cancelled",
    ]
    assert "call 'bad' (put) failed first (error)" in results[3].content()
    assert flaky.started() == []
