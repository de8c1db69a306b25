"""Turn one batch of calls and their resource claims into an order. Pure: no asyncio, no I/O.

Two calls conflict when they claim the same resource and at least one of them writes. A resource
is a string `scheme:value`; when the value starts with "/" it is a path, and a path conflicts with
every path below it (`file:/a` with `file:/a/b`), so a directory write orders against the files in
it. Conflicting calls keep the order the model emitted them in; an explicit `depends_on` adds an
edge that may point either way; everything else is free to overlap.

Edges are built against the frontier of each resource (its last writer and the readers since), not
against every earlier claim: the order between all conflicting pairs still follows transitively, and
a batch of n calls costs O(n) dictionary work instead of O(n²) pair checks.

Transitive order needs every call on the way to take its turn. A call that cannot run (a bad
`depends_on`, a cycle) is settled as the batch starts, so the planner adds order-only edges around
it: from each call before it to each call after it, as if it had run in its turn.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["Claim", "Edge", "EdgeKind", "Plan", "PlanItem", "make_plan"]

EXCLUSIVE_RESOURCE = "*undeclared*"
"""The resource every undeclared call writes: undeclared calls run one at a time."""


@dataclass(frozen=True, slots=True)
class Claim:
    """One resource a call touches, and whether it writes it."""

    resource: str
    write: bool

    def __str__(self) -> str:
        return f"{'writes' if self.write else 'reads'} {self.resource}"


class EdgeKind(enum.Enum):
    """Why one call waits for another."""

    RESOURCE = "resource"
    """They conflict on a resource: the later one is skipped if the earlier one failed."""
    EXPLICIT = "depends_on"
    """The later call named the earlier one in `depends_on`: skipped if it failed."""
    EXCLUSIVE = "exclusive"
    """Both are undeclared tools, run one at a time; a failure does not skip the next."""
    ORDER = "order"
    """They were ordered through calls that cannot run; order only, a failure does not skip."""


@dataclass(frozen=True, slots=True)
class Edge:
    """`after` starts only when `before` has finished."""

    before: int
    after: int
    kind: EdgeKind
    resource: str | None = None

    @property
    def propagates_failure(self) -> bool:
        """Whether `after` is skipped when `before` did not succeed."""
        kind = self.kind  # identity tests: this runs for every edge of every call that starts
        return kind is EdgeKind.RESOURCE or kind is EdgeKind.EXPLICIT


class PlanItem(NamedTuple):
    """What the planner needs to know of one call (a NamedTuple: one is built per call)."""

    id: str
    claims: tuple[Claim, ...] = ()
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    """The order of one batch: incoming and outgoing edges per call, and calls that cannot run."""

    ids: tuple[str, ...]
    claims: tuple[tuple[Claim, ...], ...] = field(repr=False)
    edges: tuple[Edge, ...]
    incoming: tuple[tuple[Edge, ...], ...] = field(repr=False)
    outgoing: tuple[tuple[Edge, ...], ...] = field(repr=False)
    errors: dict[int, str] = field(default_factory=dict)
    """Calls that must not run, by index, with the reason (unknown dependency, cycle)."""

    def __len__(self) -> int:
        return len(self.ids)

    def waits_for(self, index: int) -> tuple[Edge, ...]:
        """Return the edges call `index` waits on."""
        return self.incoming[index]


def make_plan(items: Sequence[PlanItem]) -> Plan:
    """Order `items` (in emitted order) by their claims and explicit dependencies."""
    edges: list[Edge] = []
    errors: dict[int, str] = {}
    frontier = _Frontier()
    for index, item in enumerate(items):
        for claim in item.claims:
            edges.extend(frontier.add(index, claim))
    edges.extend(_explicit_edges(items, errors))
    edges = _dedupe(edges)
    incoming, outgoing = _index(len(items), edges)
    if any(e.before > e.after for e in edges):
        for cycle in _cycles(len(items), outgoing):
            names = ", ".join(repr(items[i].id) for i in sorted(cycle))
            for i in cycle:
                errors.setdefault(i, f"depends_on forms a cycle among calls {names}")
    if errors:
        bypass = _bypass_edges(outgoing, errors)
        if bypass:
            edges.extend(bypass)
            incoming, outgoing = _index(len(items), edges)
    return Plan(
        ids=tuple(item.id for item in items),
        claims=tuple(item.claims for item in items),
        edges=tuple(edges),
        incoming=tuple(tuple(e) for e in incoming),
        outgoing=tuple(tuple(e) for e in outgoing),
        errors=errors,
    )


def _index(n: int, edges: Sequence[Edge]) -> tuple[list[list[Edge]], list[list[Edge]]]:
    incoming: list[list[Edge]] = [[] for _ in range(n)]
    outgoing: list[list[Edge]] = [[] for _ in range(n)]
    for edge in edges:
        incoming[edge.after].append(edge)
        outgoing[edge.before].append(edge)
    return incoming, outgoing


class _Frontier:
    """Per resource: the last writer and the readers since it."""

    __slots__ = ("_last_write", "_paths", "_reads")

    def __init__(self) -> None:
        self._last_write: dict[str, int] = {}
        self._reads: dict[str, list[int]] = {}
        self._paths: dict[str, set[str]] = {}  # scheme -> resources of that scheme that are paths

    def add(self, index: int, claim: Claim) -> list[Edge]:
        kind = EdgeKind.EXCLUSIVE if claim.resource == EXCLUSIVE_RESOURCE else EdgeKind.RESOURCE
        edges: list[Edge] = []
        own, related = self._related(claim.resource)
        for key in related:
            last = self._last_write.get(key)
            if last is not None and last != index:
                edges.append(Edge(last, index, kind, claim.resource))
            if claim.write:
                edges.extend(
                    Edge(r, index, kind, claim.resource)
                    for r in self._reads.get(key, ())
                    if r != index
                )
        if claim.write:
            self._last_write[own] = index
            self._reads[own] = []
        else:
            self._reads.setdefault(own, []).append(index)
        return edges

    def _related(self, resource: str) -> tuple[str, list[str]]:
        """Return the key of `resource` and the keys that conflict with it.

        Those are the key itself and, for a path, the known paths above and below it.
        """
        scheme, sep, value = resource.partition(":")
        if not sep or not value.startswith("/"):
            return resource, [resource]
        # `/a/` and `/a` name one directory: without one key for both, `file:/a` followed by
        # `file:/a/` would not conflict (the prefix scan finds only the other order).
        value = value.rstrip("/")
        key = f"{scheme}:{value or '/'}"
        known = self._paths.setdefault(scheme, set())
        known.add(key)
        related = [key]
        parts = value.split("/")
        for depth in range(1, len(parts)):
            ancestor = f"{scheme}:{'/'.join(parts[:depth]) or '/'}"
            if ancestor in known:
                related.append(ancestor)
        prefix = f"{scheme}:{value}/"  # for the root `scheme:/` this matches the key itself
        related.extend(k for k in known if k.startswith(prefix) and k != key)
        return key, related


def _explicit_edges(items: Sequence[PlanItem], errors: dict[int, str]) -> list[Edge]:
    position: dict[str, int] = {}
    for index, item in enumerate(items):
        position.setdefault(item.id, index)
    edges: list[Edge] = []
    for index, item in enumerate(items):
        for dep in item.depends_on:
            before = position.get(dep)
            if before is None:
                errors.setdefault(
                    index, f"depends_on names {dep!r}, which is not a call of this batch"
                )
            elif before == index:
                errors.setdefault(index, f"call {item.id!r} depends on itself")
            else:
                edges.append(Edge(before, index, EdgeKind.EXPLICIT, None))
    return edges


def _dedupe(edges: list[Edge]) -> list[Edge]:
    # One edge per ordered pair; a failure-propagating kind wins over EXCLUSIVE.
    best: dict[tuple[int, int], Edge] = {}
    for edge in edges:
        key = (edge.before, edge.after)
        seen = best.get(key)
        if seen is None or (not seen.propagates_failure and edge.propagates_failure):
            best[key] = edge
    return list(best.values())


def _bypass_edges(outgoing: Sequence[Sequence[Edge]], errors: Mapping[int, str]) -> list[Edge]:
    """Return order-only edges past the calls in `errors`, which never take their turn.

    They are settled as the batch starts. Without these edges, in `u0 -> bad -> u2` (undeclared
    tools, `bad` naming an unknown call) `u2` would be released at once and run beside `u0`.
    """
    existing = {(e.before, e.after) for edges in outgoing for e in edges}
    added: list[Edge] = []
    for before, edges in enumerate(outgoing):
        if before in errors:
            continue
        stack = [e.after for e in edges if e.after in errors]
        seen: set[int] = set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            for edge in outgoing[node]:
                after = edge.after
                if after in errors:
                    stack.append(after)
                elif after != before and (before, after) not in existing:
                    existing.add((before, after))
                    added.append(Edge(before, after, EdgeKind.ORDER))
    return added


def _cycles(n: int, outgoing: Sequence[Sequence[Edge]]) -> list[set[int]]:
    """Return the groups of calls that wait on each other in a cycle."""
    # Kahn's algorithm leaves the calls on a cycle and those downstream of one; of these, the
    # calls that can reach themselves are on a cycle. Only backward `depends_on` edges make
    # cycles, so this runs rarely and on few calls.
    indegree = [0] * n
    for edges in outgoing:
        for edge in edges:
            indegree[edge.after] += 1
    ready = [i for i in range(n) if indegree[i] == 0]
    while ready:
        for edge in outgoing[ready.pop()]:
            indegree[edge.after] -= 1
            if indegree[edge.after] == 0:
                ready.append(edge.after)
    left = {i for i in range(n) if indegree[i] > 0}
    reach = {i: _reachable(i, outgoing, left) for i in left}
    groups: list[set[int]] = []
    placed: set[int] = set()
    for i in sorted(left):
        if i in placed or i not in reach[i]:
            continue
        group = {j for j in reach[i] if i in reach[j]}
        placed |= group
        groups.append(group)
    return groups


def _reachable(start: int, outgoing: Sequence[Sequence[Edge]], within: set[int]) -> set[int]:
    seen: set[int] = set()
    stack = [e.after for e in outgoing[start] if e.after in within]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(e.after for e in outgoing[node] if e.after in within)
    return seen
