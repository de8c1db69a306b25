"""What `corral bench tools` found: samples, per-workload results, the tables and the JSON."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import corral
from corral.cli._timeline import timeline_table
from corral.cli.bench._workloads import BATCH_SIZE, BenchOptions, Workload

__all__ = [
    "BenchReport",
    "Samples",
    "WorkloadResult",
    "detail_table",
    "environment",
    "load_average",
    "print_report",
    "server_ceiling",
    "server_floor_ms",
    "summary_table",
]


@dataclass(frozen=True, slots=True)
class Samples:
    """Seconds per batch of one side of one workload, warm-up excluded."""

    label: str
    seconds: tuple[float, ...]
    server_cpu_s: tuple[float, ...] = ()
    """For a remote workload: the CPU seconds the server process spent on each batch."""

    @property
    def median_ms(self) -> float:
        """Median milliseconds per batch."""
        return statistics.median(self.seconds) * 1000

    @property
    def p90_ms(self) -> float:
        """90th percentile of milliseconds per batch."""
        if len(self.seconds) < 2:
            return self.seconds[0] * 1000
        return statistics.quantiles(self.seconds, n=10, method="inclusive")[-1] * 1000

    @property
    def server_cpu_ms(self) -> float | None:
        """Median CPU milliseconds of the server per batch, or None for local tools."""
        return statistics.median(self.server_cpu_s) * 1000 if self.server_cpu_s else None

    def to_json(self) -> dict[str, Any]:
        """Return the figures and the raw samples as JSON-ready data."""
        data: dict[str, Any] = {
            "label": self.label,
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "min_ms": min(self.seconds) * 1000,
            "samples_ms": [s * 1000 for s in self.seconds],
        }
        if self.server_cpu_s:
            data["server_cpu_median_ms"] = self.server_cpu_ms
            data["server_cpu_ms"] = [s * 1000 for s in self.server_cpu_s]
        return data


@dataclass(frozen=True, slots=True)
class WorkloadResult:
    """corral's samples, each ToolRegistry variant's, and an optional no-registry reference."""

    workload: Workload
    corral: Samples
    peers: tuple[Samples, ...] = ()
    reference: Samples | None = None

    @property
    def best_peer(self) -> Samples | None:
        """ToolRegistry's faster variant by median, or None without the peer."""
        return min(self.peers, key=lambda s: s.median_ms, default=None)

    @property
    def ratio(self) -> float | None:
        """ToolRegistry's best median over corral's median."""
        best = self.best_peer
        return None if best is None else best.median_ms / self.corral.median_ms

    @property
    def within_ideal(self) -> bool | None:
        """Whether corral's median is within the slack of the ideal, if the workload has one."""
        w = self.workload
        if w.ideal_ms is None:
            return None
        return self.corral.median_ms <= w.ideal_ms * (1 + w.ideal_slack)

    @property
    def passed(self) -> bool | None:
        """Whether every target is met; None when there is no ToolRegistry figure to compare."""
        ratio = self.ratio
        if ratio is None:
            return None
        return ratio >= self.workload.target_ratio and self.within_ideal is not False

    def to_json(self) -> dict[str, Any]:
        """Return the result as JSON-ready data."""
        best = self.best_peer
        return {
            "workload": self.workload.key,
            "title": self.workload.title,
            "source": self.workload.source,
            "target": self.workload.target,
            "corral": self.corral.to_json(),
            "toolregistry": [p.to_json() for p in self.peers],
            "toolregistry_best": None if best is None else best.label,
            "reference": None if self.reference is None else self.reference.to_json(),
            "ratio": self.ratio,
            "within_ideal": self.within_ideal,
            "passed": self.passed,
        }


@dataclass(frozen=True, slots=True)
class BenchReport:
    """Every workload's result, and what the run was made on."""

    results: tuple[WorkloadResult, ...]
    environment: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return {
            "environment": self.environment,
            "workloads": [r.to_json() for r in self.results],
        }


def _ms(samples: Samples) -> str:
    return f"{samples.median_ms:.1f} ({samples.p90_ms:.1f})"


def _verdict(r: WorkloadResult) -> str:
    if r.passed is None:
        verdict = "[dim]no peer[/dim]"
    else:
        verdict = "[green]pass[/green]" if r.passed else "[red]FAIL[/red]"
    if r.within_ideal is False:
        verdict += f" [red](corral {r.corral.median_ms:.1f} ms > ideal + 15%)[/red]"
    return verdict


def summary_table(results: Sequence[WorkloadResult]) -> Table:
    """Return one row per workload: medians, ToolRegistry's faster API, ratio, target, result."""
    table = Table(title="corral vs ToolRegistry: ms per batch of 100 calls, median (p90)")
    table.title_justify = "left"
    for column in ("workload", "corral", "ToolRegistry", "TR's faster API", "ratio", "target"):
        table.add_column(column, no_wrap=column != "target")
    table.add_column("result")
    for r in results:
        best = r.best_peer
        ratio = r.ratio
        table.add_row(
            r.workload.title,
            _ms(r.corral),
            "-" if best is None else _ms(best),
            "-" if best is None else best.label,
            "-" if ratio is None else f"{ratio:.1f}x",
            r.workload.target,
            _verdict(r),
        )
    return table


def detail_table(results: Sequence[WorkloadResult]) -> Table:
    """Return one row per side of each workload: API and mode, median, p90, min, server CPU."""
    table = Table(title="every side measured, ms per batch")
    table.title_justify = "left"
    remote = any(r.workload.remote for r in results)
    columns = ["workload", "side", "API (mode)", "median", "p90", "min", "n"]
    if remote:
        columns.append("server CPU")
    for column in columns:
        numeric = column in ("median", "p90", "min", "n", "server CPU")
        table.add_column(column, no_wrap=True, justify="right" if numeric else "left")
    for r in results:
        rows = [("corral", r.corral), *(("ToolRegistry", p) for p in r.peers)]
        if r.reference is not None:
            rows.append(("reference", r.reference))
        best = r.best_peer
        for side, s in rows:
            mark = " *" if s is best else ""
            cells = [
                r.workload.title,
                side,
                s.label + mark,
                f"{s.median_ms:.1f}",
                f"{s.p90_ms:.1f}",
                f"{min(s.seconds) * 1000:.1f}",
                str(len(s.seconds)),
            ]
            if remote:
                cpu = s.server_cpu_ms
                cells.append("-" if cpu is None else f"{cpu:.1f}")
            table.add_row(*cells, end_section=s is rows[-1][1])
    caption = "* ToolRegistry's faster API, the one the ratio uses"
    if remote:
        caption += "; server CPU: median CPU ms the calculator server's process spent per batch"
    table.caption = caption
    return table


def load_average() -> list[float] | None:
    """Return the 1, 5 and 15 minute load averages, where the platform has them."""
    if not hasattr(os, "getloadavg"):
        return None
    return [round(x, 2) for x in os.getloadavg()]


def environment(
    options: BenchOptions, version: str | None, *, load_at_start: list[float] | None = None
) -> dict[str, Any]:
    """Return what the run was made on, for the report; the load now and at the start."""
    return {
        "corral": corral.__version__,
        "toolregistry": version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_start": load_at_start,
        "load_average": load_average(),
        "batch_size": BATCH_SIZE,
        "rounds": options.rounds,
        "warmup_rounds": options.warmup,
        "seed": options.seed,
    }


def server_floor_ms(result: WorkloadResult) -> float | None:
    """Return the least median server CPU per batch over the sides, or None for local tools.

    The server is one process on one core, so no client finishes a batch in less wall time than
    the server's CPU time for it.
    """
    floors = [s.server_cpu_ms for s in (result.corral, *result.peers) if s.server_cpu_ms]
    return min(floors, default=None)


def server_ceiling(result: WorkloadResult) -> float | None:
    """Return the highest ratio the server allows: ToolRegistry's median over the server floor."""
    best, floor = result.best_peer, server_floor_ms(result)
    return None if best is None or floor is None else best.median_ms / floor


def print_report(
    report: BenchReport, mixed: corral.ToolResults, workdir: Path, console: Console
) -> None:
    """Print the mixed batch's timeline, every side measured, and the summary."""
    env = report.environment
    title = "one mixed batch (the demo's 11 calls): what overlapped, who waited for what"
    console.print(timeline_table(mixed, title=title, base=str(workdir)))
    console.print(detail_table(report.results))
    console.print(summary_table(report.results))
    load_text = "".join(
        f", load average {label} {' '.join(f'{x:.2f}' for x in env[key])}"
        for key, label in (("load_average_start", "at start"), ("load_average", "at end"))
        if env.get(key) is not None
    )
    console.print(
        f"Medians of {env['rounds']} rounds, after {env['warmup_rounds']} warm-up round(s); in "
        "each round every side ran the same batch, in random order, timed around its own execute "
        "call only. ratio = ToolRegistry's faster API / corral. "
        f"Python {env['python']}, {env['cpus']} CPUs{load_text}, "
        f"ToolRegistry {env['toolregistry'] or '-'}."
    )
    for r in report.results:
        if r.reference is not None and r.workload.ideal_ms is not None:
            console.print(
                f"{r.workload.title}: ideal {r.workload.ideal_ms:.0f} ms; 100 bare coroutines in "
                f"an asyncio TaskGroup take {r.reference.median_ms:.1f} ms here."
            )
    remote = [r for r in report.results if r.workload.remote]
    if remote:
        console.print(
            "Remote workloads: one calculator server process per protocol on 127.0.0.1, started "
            "by the bench and shared by every side; OpenAPI operations are GET /add?a=&b= (read "
            "by method, so corral runs them at once); MCP tools declare readOnlyHint."
        )
    for r in remote:
        floor, ceiling = server_floor_ms(r), server_ceiling(r)
        if floor is not None and ceiling is not None:
            console.print(
                f"{r.workload.title}: the server needs {floor:.1f} ms of CPU per batch at least, "
                f"so no client could beat ToolRegistry by more than {ceiling:.1f}x here."
            )
