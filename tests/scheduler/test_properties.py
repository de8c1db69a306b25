"""Property tests: random batches of reads and writes checked against a brute-force oracle.

The oracle knows nothing of frontiers: it compares every pair of calls. Two calls conflict when
they touch related resources (equal, or for paths one at or below the other) and one of them
writes, or when both are undeclared. `depends_on` may point anywhere, name a missing call or the
call itself, and form cycles.

- `test_plan_matches_the_oracle` (pure): every plan edge is a real conflict or dependency, every
  conflicting pair is ordered (transitively) in emitted order, and exactly the right calls are
  errors, with the right message.
- `test_batches_run_as_the_oracle_says`: the same batches run for real through a registry, with an
  async tool that logs start and end events and yields a few times in between. No two conflicting
  calls overlapped, they ran in emitted (or dependency) order, every status is what the oracle
  derives, and the calls related to nothing were all in flight at the same moment (a gate they
  all must reach before it opens).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import corral
from corral.scheduler import EXCLUSIVE_RESOURCE, Claim, EdgeKind, Plan, PlanItem, make_plan
from corral.testing import Gate
from tests.scheduler.helpers import call
from tests.support import Timeline

# The explain phase traces every line a failing example runs: minutes instead of seconds.
NO_EXPLAIN = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]

RESOURCES = ("memory:a", "memory:b", "file:/d", "file:/d/x", "file:/d/y", "file:/e")
GHOST = "ghost"  # a depends_on id that is no call of the batch

Kind = Literal["declared", "read_only", "undeclared"]


@dataclass(frozen=True)
class Spec:
    """One generated call."""

    kind: Kind
    claims: tuple[tuple[str, bool], ...]  # (resource, writes?)
    depends_on: tuple[int | str, ...]  # indices of the batch, or GHOST
    fail: bool

    def reads(self, scheme: str) -> list[str]:
        return [r.partition(":")[2] for r, w in self.claims if not w and r.startswith(scheme)]

    def writes(self, scheme: str) -> list[str]:
        return [r.partition(":")[2] for r, w in self.claims if w and r.startswith(scheme)]


@st.composite
def batches(draw: st.DrawFn, max_calls: int = 12) -> list[Spec]:
    n = draw(st.integers(1, max_calls))
    specs: list[Spec] = []
    for _ in range(n):
        kind: Kind = draw(st.sampled_from(["declared"] * 4 + ["read_only", "undeclared"]))
        claims: tuple[tuple[str, bool], ...] = ()
        if kind == "declared":
            access = st.tuples(st.sampled_from(RESOURCES), st.booleans())
            claims = tuple(draw(st.lists(access, max_size=3)))
        depends_on: list[int | str] = []
        if draw(st.integers(0, 4)) == 0:  # few calls name dependencies; they may point anywhere
            target = st.one_of(st.integers(0, n - 1), st.just(GHOST)) if n > 1 else st.just(GHOST)
            depends_on = draw(st.lists(target, min_size=1, max_size=2))
        fail = draw(st.integers(0, 5)) == 0
        specs.append(Spec(kind, claims, tuple(depends_on), fail))
    return specs


# -- the oracle --------------------------------------------------------------------------------


def related(r1: str, r2: str) -> bool:
    s1, _, v1 = r1.partition(":")
    s2, _, v2 = r2.partition(":")
    if s1 != s2:
        return False
    if v1.startswith("/") and v2.startswith("/"):
        return v1 == v2 or v2.startswith(v1 + "/") or v1.startswith(v2 + "/")
    return v1 == v2


def conflict(a: Spec, b: Spec) -> Literal["resource", "exclusive", None]:
    if any(related(ra, rb) and (wa or wb) for ra, wa in a.claims for rb, wb in b.claims):
        return "resource"
    if a.kind == "undeclared" and b.kind == "undeclared":
        return "exclusive"
    return None


@dataclass(frozen=True)
class Oracle:
    """What must happen to a batch, worked out pair by pair."""

    edges: dict[tuple[int, int], bool]  # (before, after) -> whether a failure propagates
    errors: dict[int, str]  # up-front errors: bad depends_on, cycles

    @classmethod
    def of(cls, specs: Sequence[Spec]) -> Oracle:
        n = len(specs)
        edges: dict[tuple[int, int], bool] = {}
        for j in range(n):
            for i in range(j):
                kind = conflict(specs[i], specs[j])
                if kind is not None:
                    edges[(i, j)] = edges.get((i, j), False) or kind == "resource"
        errors: dict[int, str] = {}
        for j, spec in enumerate(specs):
            for dep in spec.depends_on:
                if dep == GHOST:
                    errors.setdefault(
                        j, f"depends_on names {GHOST!r}, which is not a call of this batch"
                    )
                elif dep == j:
                    errors.setdefault(j, f"call {ident(j)!r} depends on itself")
                else:
                    assert isinstance(dep, int)
                    edges[(dep, j)] = True
        reach = closure(n, edges)
        for j in range(n):
            if j in reach[j]:
                cycle = sorted(k for k in range(n) if k in reach[j] and j in reach[k])
                names = ", ".join(repr(ident(k)) for k in cycle)
                errors.setdefault(j, f"depends_on forms a cycle among calls {names}")
        return cls(edges, errors)

    def preds(self, j: int) -> list[tuple[int, bool]]:
        return [(i, propagates) for (i, k), propagates in self.edges.items() if k == j]

    def related_to_nothing(self, j: int) -> bool:
        return j not in self.errors and not any(j in pair for pair in self.edges)

    def statuses(self, specs: Sequence[Spec]) -> dict[int, str]:
        status = dict.fromkeys(self.errors, "error")
        while len(status) < len(specs):
            progressed = False
            for j in range(len(specs)):
                preds = self.preds(j)
                if j in status or any(i not in status for i, _ in preds):
                    continue
                if any(propagates and status[i] != "ok" for i, propagates in preds):
                    status[j] = "skipped"
                else:
                    status[j] = "error" if specs[j].fail else "ok"
                progressed = True
            assert progressed, "the oracle's graph outside cycles must be acyclic"
        return status


def closure(n: int, edges: dict[tuple[int, int], bool]) -> list[set[int]]:
    """Return, per call, the calls reachable from it by one edge or more."""
    out: list[set[int]] = [set() for _ in range(n)]
    for i, j in edges:
        out[i].add(j)
    reach: list[set[int]] = []
    for start in range(n):
        seen: set[int] = set()
        stack = list(out[start])
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(out[node])
        reach.append(seen)
    return reach


def ident(index: int) -> str:
    return f"c{index}"


def dep_id(dep: int | str) -> str:
    return dep if isinstance(dep, str) else ident(dep)


def plan_items(specs: Sequence[Spec]) -> list[PlanItem]:
    items = []
    for index, spec in enumerate(specs):
        claims = tuple(Claim(r, w) for r, w in spec.claims)
        if spec.kind == "undeclared":
            claims = (Claim(EXCLUSIVE_RESOURCE, write=True),)
        deps = tuple(dep_id(d) for d in spec.depends_on)
        items.append(PlanItem(ident(index), claims, deps))
    return items


# -- the pure property -------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, phases=NO_EXPLAIN)
@given(batches())
def test_plan_matches_the_oracle(specs: list[Spec]) -> None:
    plan = make_plan(plan_items(specs))
    oracle = Oracle.of(specs)
    n = len(specs)
    # Exactly the right calls cannot run, each with the right reason.
    assert plan.errors == oracle.errors
    # Sound: each edge is a conflict or a dependency, and propagates failure just when it should;
    # or it orders two runnable calls the oracle orders through calls that cannot run.
    oracle_reach = closure(n, oracle.edges)
    for edge in plan.edges:
        pair = (edge.before, edge.after)
        if edge.kind is EdgeKind.ORDER:
            assert not edge.propagates_failure
            assert edge.before not in plan.errors, edge
            assert edge.after not in plan.errors, edge
            assert edge.after in oracle_reach[edge.before], f"spurious edge {edge}"
            continue
        assert pair in oracle.edges, f"spurious edge {edge}"
        assert edge.propagates_failure == oracle.edges[pair], edge
    # Complete: every conflicting pair and every dependency is ordered, possibly transitively ...
    reach = closure(n, {(e.before, e.after): True for e in plan.edges})
    for i, j in oracle.edges:
        assert j in reach[i], f"{ident(i)} -> {ident(j)} is not ordered"
    # ... and between calls that run, through calls that run: the others settle at the start.
    runnable = {
        (e.before, e.after): True
        for e in plan.edges
        if e.before not in plan.errors and e.after not in plan.errors
    }
    runnable_reach = closure(n, runnable)
    for i, j in oracle.edges:
        if i not in plan.errors and j not in plan.errors:
            assert j in runnable_reach[i], f"{ident(i)} -> {ident(j)} only through an error"
    assert_consistent(plan)


def assert_consistent(plan: Plan) -> None:
    assert len({(e.before, e.after) for e in plan.edges}) == len(plan.edges), "duplicate edge"
    for index in range(len(plan)):
        assert all(e.after == index for e in plan.incoming[index])
        assert all(e.before == index for e in plan.outgoing[index])
    assert sum(map(len, plan.incoming)) == sum(map(len, plan.outgoing)) == len(plan.edges)


# -- the runtime property ----------------------------------------------------------------------


def calls_for(specs: Sequence[Spec]) -> list[corral.ToolCall]:
    calls = []
    for index, spec in enumerate(specs):
        deps = [dep_id(d) for d in spec.depends_on]
        args: dict[str, Any] = {"i": index, "fail": spec.fail}
        if spec.kind == "declared":
            args |= {
                "mr": spec.reads("memory:"),
                "mw": spec.writes("memory:"),
                "fr": spec.reads("file:"),
                "fw": spec.writes("file:"),
            }
        name = {"declared": "op", "read_only": "ro", "undeclared": "undeclared"}[spec.kind]
        calls.append(call(ident(index), name, depends_on=deps, **args))
    return calls


@dataclass(frozen=True)
class Run:
    """What the tools of one example log to, and which of its calls meet at the gate."""

    timeline: Timeline
    gate: Gate
    free: set[str]


CURRENT: contextvars.ContextVar[Run] = contextvars.ContextVar("CURRENT")


async def body(i: int, fail: bool) -> int:
    run = CURRENT.get()  # each call's task copied the context of the example that made it
    key = str(i)
    run.timeline.start(key)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    if key in run.free:
        await run.gate.passage()
    await asyncio.sleep(0)
    run.timeline.end(key)
    if fail:
        raise ValueError(f"call {i} fails on purpose")
    return i


async def op(i: int, fail: bool, mr: list[str], mw: list[str], fr: list[str], fw: list[str]) -> int:
    return await body(i, fail)


async def ro(i: int, fail: bool) -> int:
    return await body(i, fail)


async def undeclared(i: int, fail: bool) -> int:
    return await body(i, fail)


def build_tools() -> list[corral.Tool]:
    """Build the three tools once: argument models are too slow to rebuild per example."""
    builder = corral.ToolRegistry()
    return [
        builder.register(
            op, reads=["memory:{mr}", "file:{fr}"], writes=["memory:{mw}", "file:{fw}"]
        ),
        builder.register(ro, read_only=True),
        builder.register(undeclared),
    ]


TOOLS = build_tools()


def check_run(
    specs: Sequence[Spec], oracle: Oracle, results: corral.ToolResults, timeline: Timeline
) -> None:
    expected = oracle.statuses(specs)
    assert {int(r.id[1:]): r.status.value for r in results} == expected
    # Conflicting (and dependent) calls that both ran: the first ended before the second began.
    for i, j in oracle.edges:
        if timeline.has_started(str(i)) and timeline.has_started(str(j)):
            assert timeline.before(str(i), str(j)), f"{ident(i)} must end before {ident(j)}"
    for j, status in expected.items():
        ran = status in ("ok", "error") and j not in oracle.errors
        assert timeline.has_started(str(j)) == ran, ident(j)
        if status == "skipped":
            reason = results[j].content()
            assert any(f"call {ident(i)!r}" in reason for i, _ in oracle.preds(j)), reason


async def run_batch(specs: Sequence[Spec]) -> None:
    oracle = Oracle.of(specs)
    free = {str(j) for j in range(len(specs)) if oracle.related_to_nothing(j)}
    timeline = Timeline()
    gate = Gate()
    CURRENT.set(Run(timeline, gate, free))
    reg = corral.ToolRegistry()
    for tool in TOOLS:
        reg.add(tool)
    try:
        async with asyncio.timeout(10):
            task = asyncio.create_task(reg.execute(calls_for(specs)))
            await gate.wait_for(len(free))  # every free call in flight at once ...
            gate.open()  # ... before any of them may finish
            results = await task
        check_run(specs, oracle, results, timeline)
        assert reg.statistics().idle, reg.statistics()
        stray = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not stray, stray
    finally:
        await reg.aclose()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=NO_EXPLAIN,
)
@given(batches())
def test_batches_run_as_the_oracle_says(specs: list[Spec]) -> None:
    asyncio.run(run_batch(specs))


def test_the_oracle_itself_on_a_known_batch() -> None:
    # A sanity check that the oracle says what the tests above rely on.
    specs = [
        Spec("declared", (("file:/d", True),), (), fail=True),
        Spec("declared", (("file:/d/x", False),), (), fail=False),
        Spec("declared", (("file:/e", False),), (), fail=False),
        Spec("undeclared", (), (), fail=True),
        Spec("undeclared", (), (), fail=False),
        Spec("read_only", (), (0,), fail=False),
        Spec("read_only", (), (7,), fail=False),
        Spec("read_only", (), (6,), fail=False),
    ]
    oracle = Oracle.of(specs)
    assert oracle.statuses(specs) == {
        0: "error",
        1: "skipped",
        2: "ok",
        3: "error",
        4: "ok",
        5: "skipped",
        6: "error",
        7: "error",
    }
    assert oracle.errors[6] == "depends_on forms a cycle among calls 'c6', 'c7'"
    assert [j for j in range(8) if oracle.related_to_nothing(j)] == [2]
