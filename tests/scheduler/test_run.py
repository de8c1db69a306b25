"""The batch runner through ToolRegistry: overlap, order by resource and dependency, outcomes.

Overlap is proven with a Gate (n calls all arrive before any is released); order with a Timeline
of start/end events. No sleeps decide anything.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import corral
from corral import Status, ToolRegistry
from corral.testing import Gate
from tests.scheduler.helpers import MakeRegistry, call, released_when_all_arrive, statuses
from tests.support import Timeline


async def yield_a_few(times: int = 3) -> None:
    """Give every other ready task a chance to run, so a wrong overlap would show."""
    for _ in range(times):
        await asyncio.sleep(0)


# -- overlap and order -------------------------------------------------------------------------


async def test_independent_calls_all_run_at_once(registry: ToolRegistry) -> None:
    gate = Gate()

    @registry.tool(read_only=True)
    async def probe(n: int) -> int:
        await gate.passage()
        return n * 10

    calls = [call(f"c{i}", "probe", n=i) for i in range(8)]
    results = await released_when_all_arrive(registry.execute(calls), gate, 8)
    assert [r.value for r in results] == [i * 10 for i in range(8)]
    assert all(r.status is Status.OK and r.mode == "async" for r in results)


async def test_conflicting_writes_run_one_at_a_time_in_emitted_order(
    registry: ToolRegistry,
) -> None:
    timeline = Timeline()

    @registry.tool(writes="memory:{key}")
    async def put(key: str, n: int) -> int:
        with timeline.span(f"{key}{n}"):
            await yield_a_few()
        return n

    # The model emitted a3 first: emitted order, not argument order, decides.
    order = [3, 1, 4, 0, 2]
    results = await registry.execute([call(f"c{n}", "put", key="a", n=n) for n in order])
    assert results.ok
    assert timeline.started() == [f"a{n}" for n in order]
    assert timeline.max_active == 1


async def test_chains_on_different_keys_overlap(registry: ToolRegistry) -> None:
    gate = Gate()
    timeline = Timeline()

    @registry.tool(writes="memory:{key}")
    async def put(key: str, n: int) -> None:
        with timeline.span(f"{key}{n}"):
            if n == 0:
                await gate.passage()  # the head of each chain waits for the other's
            await yield_a_few()

    calls = [call(f"{k}{n}", "put", key=k, n=n) for n in range(3) for k in "ab"]
    results = await released_when_all_arrive(registry.execute(calls), gate, 2)
    assert results.ok
    for key in "ab":
        assert [k for k in timeline.started() if k[0] == key] == [f"{key}0", f"{key}1", f"{key}2"]
        assert timeline.before(f"{key}0", f"{key}1")
        assert timeline.before(f"{key}1", f"{key}2")


async def test_readers_overlap_and_a_writer_waits_for_all_of_them(registry: ToolRegistry) -> None:
    gate = Gate()
    timeline = Timeline()

    @registry.tool(reads="memory:{key}")
    async def get(key: str, tag: str) -> None:
        with timeline.span(tag):
            if tag in ("r1", "r2"):
                await gate.passage()
            await yield_a_few()

    @registry.tool(writes="memory:{key}")
    async def put(key: str, tag: str) -> None:
        with timeline.span(tag):
            await yield_a_few()

    calls = [
        call("r1", "get", key="k", tag="r1"),
        call("r2", "get", key="k", tag="r2"),
        call("w", "put", key="k", tag="w"),
        call("r3", "get", key="k", tag="r3"),
    ]
    results = await released_when_all_arrive(registry.execute(calls), gate, 2)
    assert results.ok
    assert timeline.before("r1", "w")
    assert timeline.before("r2", "w")
    assert timeline.before("w", "r3")


async def test_a_directory_write_orders_against_paths_below_it(
    make_registry: MakeRegistry, tmp_path: Path
) -> None:
    reg = make_registry(cwd=tmp_path)
    gate = Gate()
    timeline = Timeline()

    @reg.tool  # a Path parameter and nothing declared: it writes file:{path}
    async def rewrite(path: Path) -> str:
        with timeline.span(f"write {path.relative_to(tmp_path)}"):
            await gate.passage()
            await yield_a_few()
        return str(path)

    @reg.tool(read_only=True)  # read-only with a Path parameter: it reads file:{path}
    async def look(path: Path) -> str:
        with timeline.span(f"read {path.relative_to(tmp_path)}"):
            await yield_a_few()
        return str(path)

    calls = [
        call("dir", "rewrite", path="d"),
        call("below", "look", path="d/x/y.txt"),
        call("dotdot", "look", path="e/../d/z.txt"),  # resolves to d/z.txt: below d
        call("beside", "rewrite", path="e/x.txt"),
    ]
    results = await released_when_all_arrive(reg.execute(calls), gate, 2)
    assert results.ok
    assert results.by_id("dotdot").value == str(tmp_path / "d" / "z.txt")
    assert timeline.before("write d", "read d/x/y.txt")
    assert timeline.before("write d", "read d/z.txt")
    # "write d" and "write e/x.txt" both held the gate at once: they overlapped.
    assert timeline.overlapped("write d", "write e/x.txt")


async def test_relative_absolute_and_dotdot_spellings_are_one_file(
    make_registry: MakeRegistry, tmp_path: Path
) -> None:
    reg = make_registry(cwd=tmp_path)

    @reg.tool(writes="file:{name}")
    def save(name: str) -> None:
        """A str parameter declared as a file: normalised the same way as a Path."""

    spellings = ["notes.txt", "./notes.txt", "sub/../notes.txt", str(tmp_path / "notes.txt")]
    plan = reg.plan([call(f"c{i}", "save", name=s) for i, s in enumerate(spellings)])
    expected = f"file:{tmp_path.as_posix()}/notes.txt"
    assert {claim.resource for claims in plan.claims for claim in claims} == {expected}
    assert {(e.before, e.after) for e in plan.edges} == {(0, 1), (1, 2), (2, 3)}


async def test_undeclared_tools_run_one_at_a_time_beside_declared_ones(
    registry: ToolRegistry,
) -> None:
    gate = Gate()
    timeline = Timeline()

    async def undeclared(tag: str) -> None:
        with timeline.span(tag):
            if tag == "u1":
                await gate.passage()
            await yield_a_few()

    registry.register(undeclared)

    @registry.tool(read_only=True)
    async def reader(tag: str) -> None:
        with timeline.span(tag):
            await gate.passage()

    @registry.tool(writes="memory:{tag}")
    async def writer(tag: str) -> None:
        with timeline.span(tag):
            await gate.passage()

    calls = [
        call("u1", "undeclared", tag="u1"),
        call("u2", "undeclared", tag="u2"),
        call("ro", "reader", tag="ro"),
        call("w", "writer", tag="w"),
        call("u3", "undeclared", tag="u3"),
    ]
    # u1, the read-only call and the declared writer are in flight together ...
    results = await released_when_all_arrive(registry.execute(calls), gate, 3)
    assert results.ok
    # ... while the undeclared calls ran one after another, in emitted order.
    assert timeline.before("u1", "u2")
    assert timeline.before("u2", "u3")
    assert [k for k in timeline.started() if k.startswith("u")] == ["u1", "u2", "u3"]


async def test_undeclared_calls_around_ones_that_cannot_run_stay_one_at_a_time(
    registry: ToolRegistry,
) -> None:
    # Regression: a call with a bad depends_on (or on a cycle) is settled as the batch starts,
    # and the undeclared call after it started beside the one before it.
    timeline = Timeline()

    async def undeclared(tag: str) -> None:
        with timeline.span(tag):
            await yield_a_few(5)

    registry.register(undeclared)
    calls = [
        call("u0", "undeclared", tag="u0"),
        call("unknown", "undeclared", tag="unknown", depends_on=["ghost"]),
        call("u2", "undeclared", tag="u2"),
        call("self", "undeclared", tag="self", depends_on=["self"]),
        call("u4", "undeclared", tag="u4"),
        call("x", "undeclared", tag="x", depends_on=["y"]),
        call("y", "undeclared", tag="y", depends_on=["x"]),
        call("u7", "undeclared", tag="u7"),
    ]
    results = await registry.execute(calls)
    assert [r.status.value for r in results] == [
        "ok",
        "error",
        "ok",
        "error",
        "ok",
        "error",
        "error",
        "ok",
    ]
    assert timeline.started() == ["u0", "u2", "u4", "u7"]
    assert timeline.max_active == 1


async def test_assume_independent_runs_undeclared_tools_in_parallel(
    make_registry: MakeRegistry,
) -> None:
    reg = make_registry(assume="independent")
    gate = Gate()

    async def undeclared(n: int) -> int:
        await gate.passage()
        return n

    reg.register(undeclared)
    calls = [call(f"u{i}", "undeclared", n=i) for i in range(5)]
    results = await released_when_all_arrive(reg.execute(calls), gate, 5)
    assert [r.value for r in results] == list(range(5))
    assert reg.plan(calls).edges == ()


async def test_assume_independent_still_orders_declared_conflicts(
    make_registry: MakeRegistry,
) -> None:
    reg = make_registry(assume="independent")

    @reg.tool(writes="memory:k")
    def put(n: int) -> int:
        return n

    assert len(reg.plan([call("a", "put", n=1), call("b", "put", n=2)]).edges) == 1


async def test_depends_on_orders_calls_even_backward(registry: ToolRegistry) -> None:
    timeline = Timeline()

    @registry.tool(read_only=True)
    async def step(tag: str) -> None:
        with timeline.span(tag):
            await yield_a_few()

    calls = [
        call("first", "step", tag="first", depends_on=["last"]),  # points forward in the list
        call("middle", "step", tag="middle", depends_on=["first"]),
        call("last", "step", tag="last"),
    ]
    results = await registry.execute(calls)
    assert results.ok
    assert timeline.started() == ["last", "first", "middle"]
    assert timeline.before("last", "first")
    assert timeline.before("first", "middle")


async def test_thread_mode_calls_are_ordered_by_resource_too(registry: ToolRegistry) -> None:
    timeline = Timeline()

    @registry.tool(writes="memory:{key}")
    def put(key: str, n: int) -> int:  # a plain function: runs in the thread pool
        with timeline.span(f"{key}{n}"):
            return n

    results = await registry.execute([call(f"c{n}", "put", key="k", n=n) for n in range(6)])
    assert [r.value for r in results] == list(range(6))
    assert {r.mode for r in results} == {"thread"}
    assert timeline.started() == [f"k{n}" for n in range(6)]
    assert timeline.max_active == 1


async def test_waiting_calls_count_as_queued_until_they_start(registry: ToolRegistry) -> None:
    gate = Gate()

    @registry.tool(writes="memory:k")
    async def put(n: int) -> None:
        await gate.passage()

    task = asyncio.create_task(registry.execute([call(f"c{n}", "put", n=n) for n in range(3)]))
    async with asyncio.timeout(5):
        await gate.wait_for(1)
    stats = registry.statistics()
    assert (stats.in_flight, stats.queued) == (1, 2)
    assert not stats.idle
    gate.open()
    assert (await task).ok
    assert registry.statistics().idle


# -- outcomes ----------------------------------------------------------------------------------


async def test_one_result_per_call_in_input_order_whatever_finishes_first(
    registry: ToolRegistry,
) -> None:
    gate = Gate()
    released = {tag: asyncio.Event() for tag in "abc"}
    done = {tag: asyncio.Event() for tag in "abc"}
    finished: list[str] = []

    @registry.tool(read_only=True)
    async def wait(tag: str) -> str:
        await gate.passage()
        await released[tag].wait()
        finished.append(tag)
        done[tag].set()
        return tag

    task = asyncio.create_task(registry.execute([call(t, "wait", tag=t) for t in "abc"]))
    async with asyncio.timeout(5):
        await gate.wait_for(3)
        gate.open()
        for tag in "cab":
            released[tag].set()
            await done[tag].wait()
        results = await task
    assert finished == ["c", "a", "b"]
    assert [r.id for r in results] == ["a", "b", "c"]
    assert [r.value for r in results] == ["a", "b", "c"]


async def test_an_error_carries_its_type_and_message_and_nothing_is_raised(
    registry: ToolRegistry,
) -> None:
    @registry.tool(read_only=True)
    async def boom(text: str) -> None:
        raise LookupError(text)

    @registry.tool(read_only=True)
    def silent() -> None:
        raise KeyboardInterruptLike

    results = await registry.execute([call("a", "boom", text="no such thing"), call("b", "silent")])
    a, b = results
    assert a.status is Status.ERROR
    assert a.error is not None
    assert (a.error.type, a.error.message) == ("LookupError", "no such thing")
    assert a.error.traceback is not None
    assert "LookupError" in a.error.traceback
    assert a.content() == "error: LookupError: no such thing"
    assert a.started_at is not None
    assert a.finished_at is not None
    assert b.error is not None
    assert (b.error.type, b.error.message) == ("KeyboardInterruptLike", "KeyboardInterruptLike")


class KeyboardInterruptLike(Exception):
    """An exception with no message: the type name stands in for it."""


async def test_calls_that_cannot_start_are_errors_that_never_run_a_tool(
    registry: ToolRegistry,
) -> None:
    ran: list[str] = []

    @registry.tool(read_only=True)
    async def f(n: int) -> int:
        ran.append(str(n))
        return n

    results = await registry.execute(
        [
            call("bad-args", "f", n="seven"),
            call("missing", "nope"),
            call("dup", "f", n=1),
            call("dup", "f", n=2),
            call("fine", "f", n=3),
        ]
    )
    assert [r.status for r in results] == [Status.ERROR] * 4 + [Status.OK]
    assert [r.error.type for r in results[:4] if r.error] == [
        "ToolArgumentsInvalid",
        "ToolNotFound",
        "DuplicateCallId",
        "DuplicateCallId",
    ]
    assert ran == ["3"]
    assert all(r.started_at is None and r.mode is None for r in results[:4])


async def test_a_tool_raising_timeout_error_itself_is_an_error(registry: ToolRegistry) -> None:
    @registry.tool(read_only=True, timeout=30)
    async def gives_up() -> None:
        raise TimeoutError("upstream took too long")

    (result,) = await registry.execute([call("a", "gives_up")], timeout=30)
    assert result.status is Status.ERROR
    assert result.error is not None
    assert (result.error.type, result.error.message) == ("TimeoutError", "upstream took too long")


async def test_a_tool_raising_cancelled_error_itself_is_an_error(registry: ToolRegistry) -> None:
    # Regression: the task ended cancelled with no outcome and execute() raised AssertionError.
    @registry.tool(writes="memory:k")
    async def awaits_a_cancelled_future() -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    @registry.tool(writes="memory:k")
    async def after() -> str:
        return "after"

    results = await registry.execute([call("a", "awaits_a_cancelled_future"), call("b", "after")])
    assert statuses(results) == {"a": "error", "b": "skipped"}
    assert results[0].error is not None
    assert results[0].error.type == "CancelledError"


@pytest.mark.parametrize("policy", ["first", "", None])
async def test_an_unknown_policy_is_a_usage_error(registry: ToolRegistry, policy: object) -> None:
    with pytest.raises(corral.UsageError, match="policy must be 'best_effort' or 'fail_fast'"):
        await registry.execute([], policy=policy)  # type: ignore[arg-type]


async def test_an_empty_batch_returns_no_results(registry: ToolRegistry) -> None:
    results = await registry.execute([], timeout=1)
    assert list(results) == []
    assert results.ok
