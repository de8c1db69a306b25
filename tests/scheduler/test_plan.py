"""make_plan: pure, no asyncio. Edges, the frontier, path hierarchy, dedupe, depends_on, cycles."""

from __future__ import annotations

import pytest

from corral.scheduler import EXCLUSIVE_RESOURCE, Claim, Edge, EdgeKind, Plan, PlanItem, make_plan


def R(resource: str) -> Claim:
    return Claim(resource, write=False)


def W(resource: str) -> Claim:
    return Claim(resource, write=True)


def item(call_id: str, *claims: Claim, depends_on: tuple[str, ...] = ()) -> PlanItem:
    return PlanItem(call_id, claims, depends_on)


def pairs(plan: Plan) -> set[tuple[int, int]]:
    return {(e.before, e.after) for e in plan.edges}


def plan_of(*claims: Claim) -> Plan:
    """One call per claim, ids c0, c1, ..."""
    return make_plan([item(f"c{i}", c) for i, c in enumerate(claims)])


# -- conflicts -------------------------------------------------------------------------------


def test_calls_without_claims_are_unordered() -> None:
    plan = make_plan([item("a"), item("b"), item("c")])
    assert plan.edges == ()
    assert plan.errors == {}
    assert plan.ids == ("a", "b", "c")
    assert len(plan) == 3


def test_reads_of_one_resource_do_not_conflict() -> None:
    assert pairs(plan_of(R("memory:k"), R("memory:k"), R("memory:k"))) == set()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (W("memory:k"), R("memory:k")),
        (R("memory:k"), W("memory:k")),
        (W("memory:k"), W("memory:k")),
    ],
    ids=["write-read", "read-write", "write-write"],
)
def test_a_write_orders_against_any_other_access(first: Claim, second: Claim) -> None:
    plan = plan_of(first, second)
    assert plan.edges == (Edge(0, 1, EdgeKind.RESOURCE, "memory:k"),)
    assert plan.waits_for(1) == plan.edges
    assert plan.waits_for(0) == ()
    assert plan.outgoing[0] == plan.edges


def test_different_resources_do_not_conflict() -> None:
    assert pairs(plan_of(W("memory:a"), W("memory:b"), W("file:/x"), W("file:/y"))) == set()


def test_non_path_resources_match_exactly() -> None:
    # "memory:a/b" is not below "memory:a": only values starting with "/" are paths.
    assert pairs(plan_of(W("memory:a"), W("memory:ab"), W("memory:a/b"), W("memory:A"))) == set()


def test_schemes_separate_resources_even_for_the_same_path() -> None:
    assert pairs(plan_of(W("file:/a"), W("http:/a"), W("file:/a/b"))) == {(0, 2)}


def test_a_call_never_waits_for_itself() -> None:
    plan = make_plan([item("a", R("memory:k"), W("memory:k"), R("memory:k")), item("b")])
    assert plan.edges == ()


# -- the frontier ----------------------------------------------------------------------------


def test_writes_chain_through_the_last_writer_only() -> None:
    # The order of all conflicting pairs follows transitively; no O(n^2) edges.
    assert pairs(plan_of(W("m:k"), W("m:k"), W("m:k"), W("m:k"))) == {(0, 1), (1, 2), (2, 3)}


def test_a_write_waits_for_the_last_writer_and_every_reader_since() -> None:
    plan = plan_of(W("m:k"), R("m:k"), R("m:k"), W("m:k"), R("m:k"))
    assert pairs(plan) == {(0, 1), (0, 2), (0, 3), (1, 3), (2, 3), (3, 4)}


def test_readers_before_the_first_write_all_precede_it() -> None:
    assert pairs(plan_of(R("m:k"), R("m:k"), W("m:k"))) == {(0, 2), (1, 2)}


def test_a_long_chain_has_linear_edges() -> None:
    n = 2000
    plan = make_plan([item(f"c{i}", W("memory:k"), R("memory:other")) for i in range(n)])
    assert len(plan.edges) == n - 1
    assert all(e.before + 1 == e.after for e in plan.edges)


# -- path hierarchy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (W("file:/a"), R("file:/a/b")),
        (R("file:/a/b"), W("file:/a")),
        (W("file:/a/b/c"), R("file:/a")),
        (R("file:/a"), W("file:/a/b/c")),
        (W("file:/"), R("file:/x/y")),
        (R("file:/x/y"), W("file:/")),
    ],
    ids=["dir-then-file", "file-then-dir", "deep-then-dir", "dir-then-deep", "root", "root-last"],
)
def test_a_directory_conflicts_with_every_path_below_it(first: Claim, second: Claim) -> None:
    assert pairs(plan_of(first, second)) == {(0, 1)}


def test_siblings_and_name_prefixes_do_not_conflict() -> None:
    # "/ab" is not below "/a"; "/a/b" and "/a/c" are siblings.
    assert pairs(plan_of(W("file:/a/b"), W("file:/a/c"), W("file:/ab"), W("file:/a-b"))) == set()


def test_directory_reads_overlap_file_reads() -> None:
    assert pairs(plan_of(R("file:/a"), R("file:/a/b"), R("file:/"))) == set()


@pytest.mark.parametrize(
    ("first", "second"),
    [("file:/a/", "file:/a"), ("file:/a", "file:/a/"), ("file:/a/", "file:/a/b")],
)
def test_a_trailing_slash_names_the_same_directory(first: str, second: str) -> None:
    # Regression: `file:/a` then `file:/a/` used not to conflict (only the other order did).
    assert pairs(plan_of(W(first), W(second))) == {(0, 1)}


def test_a_directory_write_sits_between_writes_below_it() -> None:
    plan = plan_of(W("file:/d/x"), W("file:/d/y"), W("file:/d"), R("file:/d/x"), R("file:/d/y"))
    assert pairs(plan) == {(0, 2), (1, 2), (0, 3), (2, 3), (1, 4), (2, 4)}


def test_a_file_write_after_a_directory_read_waits_for_it() -> None:
    plan = plan_of(R("file:/d"), W("file:/d/x"), R("file:/d"))
    assert pairs(plan) == {(0, 1), (1, 2)}


# -- undeclared tools ------------------------------------------------------------------------


def test_undeclared_calls_chain_with_exclusive_edges() -> None:
    plan = make_plan(
        [
            item("u1", W(EXCLUSIVE_RESOURCE)),
            item("ro"),  # read-only: claims nothing
            item("w", W("memory:k")),
            item("u2", W(EXCLUSIVE_RESOURCE)),
        ]
    )
    assert plan.edges == (Edge(0, 3, EdgeKind.EXCLUSIVE, EXCLUSIVE_RESOURCE),)
    assert not plan.edges[0].propagates_failure


def test_edge_kinds_say_whether_failure_propagates() -> None:
    assert Edge(0, 1, EdgeKind.RESOURCE, "m:k").propagates_failure
    assert Edge(0, 1, EdgeKind.EXPLICIT).propagates_failure
    assert not Edge(0, 1, EdgeKind.EXCLUSIVE, EXCLUSIVE_RESOURCE).propagates_failure
    assert not Edge(0, 1, EdgeKind.ORDER).propagates_failure


# -- dedupe ----------------------------------------------------------------------------------


def test_one_edge_per_pair_and_a_propagating_kind_wins() -> None:
    plan = make_plan(
        [
            item("a", W(EXCLUSIVE_RESOURCE), W("m:x"), W("m:y")),
            item("b", W(EXCLUSIVE_RESOURCE), W("m:x"), R("m:y"), depends_on=("a", "a")),
        ]
    )
    assert len(plan.edges) == 1
    assert plan.edges[0].propagates_failure
    assert len(plan.waits_for(1)) == 1


def test_dedupe_keeps_a_later_propagating_edge_over_an_earlier_exclusive_one() -> None:
    plan = make_plan(
        [item("a", W(EXCLUSIVE_RESOURCE), W("m:x")), item("b", W(EXCLUSIVE_RESOURCE), R("m:x"))]
    )
    assert plan.edges == (Edge(0, 1, EdgeKind.RESOURCE, "m:x"),)


# -- depends_on ------------------------------------------------------------------------------


def test_depends_on_adds_an_edge_between_unrelated_calls() -> None:
    plan = make_plan([item("a", W("m:x")), item("b", W("m:y"), depends_on=("a",))])
    assert plan.edges == (Edge(0, 1, EdgeKind.EXPLICIT, None),)


def test_depends_on_may_point_backward() -> None:
    plan = make_plan([item("a", depends_on=("c",)), item("b"), item("c")])
    assert plan.edges == (Edge(2, 0, EdgeKind.EXPLICIT, None),)
    assert plan.errors == {}


def test_unknown_dependency_is_an_error_naming_it() -> None:
    plan = make_plan([item("a"), item("b", depends_on=("a", "zzz"))])
    assert plan.errors == {1: "depends_on names 'zzz', which is not a call of this batch"}
    assert pairs(plan) == {(0, 1)}  # the known dependency still orders


def test_self_dependency_is_an_error() -> None:
    plan = make_plan([item("a", depends_on=("a",))])
    assert plan.errors == {0: "call 'a' depends on itself"}
    assert plan.edges == ()


def test_a_two_call_cycle_errors_both_and_spares_the_rest() -> None:
    plan = make_plan(
        [
            item("a", depends_on=("b",)),
            item("b", depends_on=("a",)),
            item("c", depends_on=("b",)),  # downstream of the cycle: not itself in error
            item("d"),
        ]
    )
    message = "depends_on forms a cycle among calls 'a', 'b'"
    assert plan.errors == {0: message, 1: message}


def test_a_cycle_through_a_resource_edge_is_found() -> None:
    # b waits for a on m:k; a names b in depends_on.
    plan = make_plan([item("a", W("m:k"), depends_on=("b",)), item("b", R("m:k")), item("c")])
    assert set(plan.errors) == {0, 1}
    assert "'a', 'b'" in plan.errors[0]


def test_separate_cycles_are_named_separately() -> None:
    plan = make_plan(
        [
            item("a", depends_on=("c",)),
            item("b", depends_on=("a",)),
            item("c", depends_on=("b",)),
            item("x", depends_on=("y",)),
            item("y", depends_on=("x",)),
            item("z", depends_on=("a", "x")),
        ]
    )
    abc = "depends_on forms a cycle among calls 'a', 'b', 'c'"
    xy = "depends_on forms a cycle among calls 'x', 'y'"
    assert plan.errors == {0: abc, 1: abc, 2: abc, 3: xy, 4: xy}


def test_a_backward_dependency_without_a_cycle_is_fine() -> None:
    plan = make_plan([item("a", W("m:k"), depends_on=("c",)), item("b", W("m:k")), item("c")])
    assert plan.errors == {}
    assert pairs(plan) == {(2, 0), (0, 1)}


def test_the_first_problem_of_a_call_is_the_one_reported() -> None:
    plan = make_plan([item("a", depends_on=("a", "nope"))])
    assert plan.errors == {0: "call 'a' depends on itself"}


def test_claims_are_kept_per_call() -> None:
    plan = make_plan([item("a", W("m:x")), item("b")])
    assert plan.claims == ((W("m:x"),), ())


def test_claim_describes_itself() -> None:
    assert str(W("file:/a")) == "writes file:/a"
    assert str(R("memory:k")) == "reads memory:k"


# -- order around calls that cannot run --------------------------------------------------------


def U(call_id: str, depends_on: tuple[str, ...] = ()) -> PlanItem:
    """An undeclared call."""
    return item(call_id, W(EXCLUSIVE_RESOURCE), depends_on=depends_on)


@pytest.mark.parametrize("bad", [("ghost",), ("u1",)], ids=["unknown", "self"])
def test_calls_around_one_that_cannot_run_stay_in_order(bad: tuple[str, ...]) -> None:
    # Regression: u1 is settled as the batch starts, which released u2 beside u0.
    plan = make_plan([U("u0"), U("u1", depends_on=bad), U("u2")])
    assert set(plan.errors) == {1}
    assert Edge(0, 2, EdgeKind.ORDER) in plan.edges
    assert Edge(0, 2, EdgeKind.ORDER) in plan.waits_for(2)


def test_calls_around_a_cycle_stay_in_order() -> None:
    plan = make_plan([U("u0"), U("a", depends_on=("b",)), U("b", depends_on=("a",)), U("u3")])
    assert set(plan.errors) == {1, 2}
    assert Edge(0, 3, EdgeKind.ORDER) in plan.edges
    order = [e for e in plan.edges if e.kind is EdgeKind.ORDER]
    assert order == [Edge(0, 3, EdgeKind.ORDER)]  # none to or from the calls that cannot run


def test_no_order_edge_where_a_direct_one_exists() -> None:
    plan = make_plan([U("u0"), U("u1", depends_on=("zz",)), U("u2", depends_on=("u0",))])
    assert Edge(0, 2, EdgeKind.EXPLICIT) in plan.edges
    assert all(e.kind is not EdgeKind.ORDER for e in plan.edges)


def test_order_edges_reach_calls_that_will_be_skipped_without_skipping() -> None:
    # b is skipped (it writes m:k after a, which cannot run), but only once w0 is done: the
    # ORDER edge keeps "w0 before c" even though c is only ordered after w0 through a and b.
    plan = make_plan(
        [item("w0", W("m:k")), item("a", W("m:k"), depends_on=("zz",)), item("c", W("m:k"))]
    )
    assert Edge(0, 2, EdgeKind.ORDER) in plan.waits_for(2)
    assert not Edge(0, 2, EdgeKind.ORDER).propagates_failure


def test_a_plan_without_errors_has_no_order_edges() -> None:
    plan = make_plan([U("u0"), U("u1"), U("u2")])
    assert all(e.kind is EdgeKind.EXCLUSIVE for e in plan.edges)
