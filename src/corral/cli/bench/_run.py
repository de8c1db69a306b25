"""`run_tools_bench`: the peer's venv, the servers, the measurements and the report, in order."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path

from rich.console import Console

import corral
from corral.cli.bench._measure import measure_all
from corral.cli.bench._peer import (
    TOOLREGISTRY_VERSION,
    default_bench_dir,
    ensure_peer_env,
    open_peer,
)
from corral.cli.bench._report import (
    BenchReport,
    WorkloadResult,
    environment,
    load_average,
    print_report,
)
from corral.cli.bench._servers import open_servers, require_server_modules
from corral.cli.bench._workloads import BenchError, BenchOptions
from corral.cli.demo import DEMO_CALLS, demo_registry

__all__ = ["run_tools_bench"]


async def _mixed_batch(workdir: Path) -> corral.ToolResults:
    async with demo_registry(workdir) as reg:
        return await reg.execute(DEMO_CALLS, timeout=30)


async def _bench(
    options: BenchOptions, console: Console, python: Path | None, bench_dir: Path, workdir: Path
) -> tuple[list[WorkloadResult], corral.ToolResults, str | None]:
    """Measure every workload, peer and servers alongside as needed, then one mixed batch.

    The peer and the servers are stopped before this returns or raises, Ctrl-C included: they
    are context managers, and the run's timeout or an interrupt cancels what runs inside them.
    """
    log_dir = bench_dir / "logs"
    # The servers stop by themselves a minute after the run's own limit, should this process die
    # without closing their stdin or signalling them.
    server_limit_s = options.max_seconds + 60
    try:
        async with (
            asyncio.timeout(options.max_seconds),
            open_servers(options.workloads, log_dir, max_seconds=server_limit_s) as servers,
        ):
            if python is None:
                results = await measure_all(options, console, None, servers)
                version = None
            else:
                log_path = bench_dir / f"toolregistry-{TOOLREGISTRY_VERSION}" / "peer.log"
                async with open_peer(python, log_path) as peer:
                    results = await measure_all(options, console, peer, servers)
                    version = peer.version
            mixed = await _mixed_batch(workdir)
    except TimeoutError:
        raise BenchError(f"stopped: the run took longer than {options.max_seconds:g} s") from None
    return results, mixed, version


def run_tools_bench(options: BenchOptions, *, console: Console | None = None) -> BenchReport:
    """Run `corral bench tools`: measure, print the tables, and write JSON if asked.

    Makes ToolRegistry's venv first if `options.peer` and it is missing (needs PyPI). For the
    remote workloads it starts the calculator servers on 127.0.0.1. The peer process and the
    servers are stopped before this returns, also on errors and Ctrl-C.

    Raises:
        UsageError: a bad option.
        BenchError: the peer environment, a server, or a side's calls failed.
    """
    if options.rounds < 1 or options.warmup < 0:
        raise corral.UsageError(
            f"rounds must be >= 1 and warmup >= 0, got {options.rounds} and {options.warmup}"
        )
    if not options.workloads:
        raise corral.UsageError("no workload selected")
    require_server_modules(options.workloads)
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=170)
    bench_dir = options.bench_dir or default_bench_dir()
    python = ensure_peer_env(bench_dir, console) if options.peer else None
    load_at_start = load_average()
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        workdir = Path(os.path.realpath(tmp))
        results, mixed, version = asyncio.run(_bench(options, console, python, bench_dir, workdir))
    report = BenchReport(tuple(results), environment(options, version, load_at_start=load_at_start))
    print_report(report, mixed, workdir, console)
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        console.print(f"Results written to {options.json_path}")
    return report
