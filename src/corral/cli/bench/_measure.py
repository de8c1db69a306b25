"""Measuring: the sides of each workload, rounds in random order, samples per side.

Each round draws one batch of calls and runs it once on every side (corral, each ToolRegistry
variant, and for async sleeps a bare-asyncio reference) in a random order; each side times only
its own execute call. For a remote workload the bench also reads the server's CPU time before and
after each side's batch, and checks that the server served every call of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

import corral
from corral.cli.bench import _bench_tools as bt
from corral.cli.bench._peer import Peer
from corral.cli.bench._report import Samples, WorkloadResult
from corral.cli.bench._servers import API_OF, Server
from corral.cli.bench._workloads import BenchError, BenchOptions, Variant, Workload, make_calls

__all__ = ["measure_all"]

Role = Literal["corral", "peer", "reference"]


@dataclass(frozen=True, slots=True)
class _Side:
    role: Role
    label: str
    run: Callable[[list[dict[str, Any]]], Awaitable[float]]


@contextlib.asynccontextmanager
async def _corral_registry(
    workload: Workload, server: Server | None
) -> AsyncIterator[corral.ToolRegistry]:
    if server is None:
        # In process mode the registry's own mode makes `start()` warm the pool and preload the
        # tools' module in every worker, so no round pays for a worker start or an import.
        reg = corral.ToolRegistry(mode="process" if workload.corral_mode == "process" else "auto")
        for fn in (*bt.ARITHMETIC, bt.sleep_blocking, bt.sleep_async):
            reg.register(fn, read_only=True)  # pure or harmless: nothing to serialize them on
        async with reg:
            yield reg
        return
    async with corral.ToolRegistry() as reg:
        url = server.url(workload.source)
        if workload.source == "openapi":
            tools = await reg.register_openapi(url)
        else:
            tools = await reg.register_mcp(url)
        # Read-only as the server declares it: GET operations read their path, and the MCP
        # tools carry readOnlyHint; so every call of a batch may run at once. Undeclared, they
        # would run one at a time, and the bench would measure that instead.
        writers = [t.name for t in tools if not t.read_only]
        if writers:
            raise BenchError(f"the calculator tools {writers} of {url} are not read-only")
        yield reg


def _corral_side(workload: Workload, reg: corral.ToolRegistry) -> _Side:
    async def run(calls: list[dict[str, Any]]) -> float:
        started = time.perf_counter()
        # No batch deadline, as ToolRegistry has none: a deadline costs two timers per call. The
        # run as a whole is bounded by `max_seconds`, whose cancellation stops the batch.
        results = await reg.execute(calls, mode=workload.corral_mode)
        elapsed = time.perf_counter() - started
        if not results.ok:
            failed = [r for r in results if not r.ok]
            raise BenchError(f"{len(failed)} corral calls of {workload.key} failed: {failed[0]}")
        return elapsed

    return _Side("corral", workload.corral_label, run)


def _peer_side(workload: Workload, peer: Peer, variant: Variant, server: Server | None) -> _Side:
    if server is None:
        key, source = workload.key, None
    else:
        # One registry per API: ToolRegistry keeps a remote source's connection on the loop of
        # the API that opened it (the peer's loop for async, its background loop for sync).
        key = f"{workload.key}/{variant.label}"
        source = {"kind": API_OF[workload.source], "url": server.url(workload.source)}

    async def run(calls: list[dict[str, Any]]) -> float:
        return await peer.run(key, variant, calls, source=source)

    return _Side("peer", variant.label, run)


async def _bare_sleeps(calls: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for index in range(len(calls)):
            tg.create_task(bt.sleep_async(index))
    return time.perf_counter() - started


def _has_reference(workload: Workload) -> bool:
    """Whether the workload also times bare coroutines, the floor the event loop sets."""
    return workload.kind == "sleep_async"


def _sides(
    workload: Workload, reg: corral.ToolRegistry, peer: Peer | None, server: Server | None
) -> list[_Side]:
    sides = [_corral_side(workload, reg)]
    if peer is not None:
        sides += [_peer_side(workload, peer, v, server) for v in workload.variants]
    if _has_reference(workload):
        sides.append(_Side("reference", "asyncio TaskGroup, no registry", _bare_sleeps))
    return sides


async def _run_side(
    side: _Side, calls: list[dict[str, Any]], server: Server | None, cpu: list[float]
) -> float:
    """Run one batch on one side; for a remote workload, note the server's CPU time for it."""
    if server is None:
        return await side.run(calls)
    before = await server.stats()
    elapsed = await side.run(calls)
    after = await server.stats()
    if after.calls - before.calls != len(calls):
        raise BenchError(
            f"the {server.api} server served {after.calls - before.calls} calls of a batch of "
            f"{len(calls)} from {side.label}"
        )
    cpu.append(after.cpu_s - before.cpu_s)
    return elapsed


async def _measure(
    workload: Workload,
    options: BenchOptions,
    peer: Peer | None,
    server: Server | None,
    advance: Callable[[], None],
    rng: random.Random,
) -> WorkloadResult:
    """Run warm-up then measured rounds; each round runs one batch per side in random order."""
    async with _corral_registry(workload, server) as reg:
        sides = _sides(workload, reg, peer, server)
        samples: dict[str, list[float]] = {side.label: [] for side in sides}
        cpu: dict[str, list[float]] = {side.label: [] for side in sides}
        for round_ in range(options.warmup + options.rounds):
            calls = make_calls(workload.kind, rng)
            order = list(sides)
            rng.shuffle(order)
            for side in order:
                side_cpu: list[float] = []
                elapsed = await _run_side(side, calls, server, side_cpu)
                if round_ >= options.warmup:
                    samples[side.label].append(elapsed)
                    cpu[side.label] += side_cpu
                advance()
    by_role: dict[Role, list[Samples]] = {"corral": [], "peer": [], "reference": []}
    for side in sides:
        by_role[side.role].append(
            Samples(side.label, tuple(samples[side.label]), tuple(cpu[side.label]))
        )
    return WorkloadResult(
        workload,
        corral=by_role["corral"][0],
        peers=tuple(by_role["peer"]),
        reference=by_role["reference"][0] if by_role["reference"] else None,
    )


def _progress(console: Console) -> Progress:
    # Refreshed by hand between batches: an auto-refresh thread would take the GIL while
    # corral's batches run in this process and slow them down.
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("batches"),
        TimeElapsedColumn(),
        console=console,
        auto_refresh=False,
    )


async def measure_all(
    options: BenchOptions, console: Console, peer: Peer | None, servers: Mapping[str, Server]
) -> list[WorkloadResult]:
    """Measure every selected workload in turn, with a progress bar per workload.

    Args:
        options: Rounds, warm-up, seed and the workloads.
        console: Where the progress bars go.
        peer: The ToolRegistry peer, or None for corral alone.
        servers: The running calculator servers by API, for the remote workloads.
    """
    rng = random.Random(options.seed)
    results: list[WorkloadResult] = []
    with _progress(console) as progress:
        tasks = []
        for w in options.workloads:
            sides = 1 + (len(w.variants) if peer is not None else 0) + _has_reference(w)
            total = (options.warmup + options.rounds) * sides
            tasks.append(progress.add_task(w.title, total=total))
        for workload, task_id in zip(options.workloads, tasks, strict=True):

            def advance(task_id: Any = task_id) -> None:
                progress.advance(task_id)
                progress.refresh()

            server = servers[API_OF[workload.source]] if workload.remote else None
            results.append(await _measure(workload, options, peer, server, advance, rng))
    return results
