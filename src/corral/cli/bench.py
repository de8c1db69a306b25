"""`corral bench tools`: corral and ToolRegistry 0.19.0 side by side, alternating, in one run.

ToolRegistry runs in its own virtual environment (made on first use under `.bench/`), inside a
long-lived peer process (`_peer_toolregistry.py`) that this process drives with JSON lines. Each
round generates one batch of 100 calls and runs it once on every side (corral, and each
ToolRegistry API/mode) in a random order; both sides time only their own execute call. The
figures are medians over the measured rounds, warm-up rounds excluded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

import corral
from corral.cli import _bench_tools as bt
from corral.cli._timeline import timeline_table
from corral.cli.demo import DEMO_CALLS, demo_registry

__all__ = [
    "BATCH_SIZE",
    "BenchError",
    "BenchOptions",
    "BenchReport",
    "Peer",
    "Samples",
    "TOOLREGISTRY_VERSION",
    "Variant",
    "WORKLOADS",
    "Workload",
    "WorkloadResult",
    "detail_table",
    "ensure_peer_env",
    "make_calls",
    "open_peer",
    "run_tools_bench",
    "summary_table",
]

TOOLREGISTRY_VERSION = "0.19.0"
BATCH_SIZE = 100
_PEER_SCRIPT = Path(__file__).with_name("_peer_toolregistry.py")
_PEER_REPLY_TIMEOUT_S = 120.0
_PEER_START_TIMEOUT_S = 60.0

Kind = Literal["arithmetic", "sleep_blocking", "sleep_async"]


class BenchError(RuntimeError):
    """The benchmark could not run: the peer environment, the peer, or a failing call."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One way of running a batch on ToolRegistry: its sync or async API, in a mode."""

    api: Literal["sync", "async"]
    mode: Literal["thread", "process"] | None

    @property
    def label(self) -> str:
        """Name the API and mode, e.g. `aexecute_tool_calls(thread)`."""
        method = "execute_tool_calls" if self.api == "sync" else "aexecute_tool_calls"
        return f"{method}({self.mode or 'default'})"


@dataclass(frozen=True, slots=True)
class Workload:
    """A batch of 100 calls of one kind, how corral runs it, and the target it must meet."""

    key: str
    title: str
    kind: Kind
    corral_mode: Literal["thread", "process"] | None
    target_ratio: float
    variants: tuple[Variant, ...]
    ideal_ms: float | None = None
    """If set, corral's median must also be within `ideal_slack` of this."""
    ideal_slack: float = 0.15

    @property
    def corral_label(self) -> str:
        """Name corral's call, e.g. `execute(mode='thread')`."""
        return f"execute(mode={self.corral_mode!r})" if self.corral_mode else "execute()"

    @property
    def target(self) -> str:
        """Describe the target for the table."""
        text = f">= {self.target_ratio:g}x"
        if self.ideal_ms is not None:
            text += f", corral <= {self.ideal_ms * (1 + self.ideal_slack):.1f} ms"
        return text


_SYNC_THREAD, _ASYNC_THREAD = Variant("sync", "thread"), Variant("async", "thread")
_THREAD = (_SYNC_THREAD, _ASYNC_THREAD)
_PROCESS = (Variant("sync", "process"), Variant("async", "process"))
_ASYNC = (Variant("async", None), _ASYNC_THREAD, _SYNC_THREAD)
_IDEAL_MS = bt.SLEEP_S * 1000

WORKLOADS: tuple[Workload, ...] = (
    Workload("arith-thread", "arithmetic, thread", "arithmetic", "thread", 3.0, _THREAD),
    Workload("arith-process", "arithmetic, process", "arithmetic", "process", 3.0, _PROCESS),
    Workload(
        "sleep-thread", "blocking 20 ms sleep, thread", "sleep_blocking", "thread", 10, _THREAD
    ),
    Workload("sleep-async", "async 20 ms sleep", "sleep_async", None, 1.8, _ASYNC, _IDEAL_MS),
)
"""The four workloads of the issue, in the order they run."""


@dataclass(frozen=True, slots=True)
class Samples:
    """Seconds per batch of one side of one workload, warm-up excluded."""

    label: str
    seconds: tuple[float, ...]

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

    def to_json(self) -> dict[str, Any]:
        """Return the figures and the raw samples as JSON-ready data."""
        return {
            "label": self.label,
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "min_ms": min(self.seconds) * 1000,
            "samples_ms": [s * 1000 for s in self.seconds],
        }


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
class BenchOptions:
    """What `corral bench tools` runs; see the command's help."""

    rounds: int = 15
    warmup: int = 3
    peer: bool = True
    json_path: Path | None = None
    bench_dir: Path | None = None
    seed: int = 0
    max_seconds: float = 600.0
    workloads: tuple[Workload, ...] = WORKLOADS


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


# -- calls -------------------------------------------------------------------------------------


def make_calls(kind: Kind, rng: random.Random, *, size: int = BATCH_SIZE) -> list[dict[str, Any]]:
    """Return `size` OpenAI `tool_calls` entries of one workload kind, drawn from `rng`."""
    calls: list[dict[str, Any]] = []
    for index in range(size):
        args: dict[str, Any]
        if kind == "arithmetic":
            name = rng.choice(bt.ARITHMETIC).__name__
            args = {"a": round(rng.uniform(-1000, 1000), 3), "b": round(rng.uniform(1, 100), 3)}
        else:
            fn = bt.sleep_blocking if kind == "sleep_blocking" else bt.sleep_async
            name = fn.__name__
            args = {"tag": index}
        calls.append(
            {
                "id": f"call_{index}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
        )
    return calls


# -- the ToolRegistry environment and peer -----------------------------------------------------


def _default_bench_dir() -> Path:
    root = Path(__file__).resolve().parents[3]  # src/corral/cli/bench.py -> the repository
    if (root / "pyproject.toml").is_file() and (root / "src" / "corral").is_dir():
        return root / ".bench"
    return Path.cwd() / ".bench"


def _venv_python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _has_toolregistry(python: Path) -> bool:
    if not python.exists():
        return False
    check = (
        f"import sys, toolregistry; sys.exit(toolregistry.__version__ != {TOOLREGISTRY_VERSION!r})"
    )
    done = subprocess.run([str(python), "-c", check], capture_output=True, timeout=120, check=False)
    return done.returncode == 0


def ensure_peer_env(bench_dir: Path, console: Console) -> Path:
    """Return the Python of ToolRegistry's own venv, making it (venv + pip install) if needed.

    Raises:
        BenchError: the venv could not be made or ToolRegistry could not be installed.
    """
    env = bench_dir / f"toolregistry-{TOOLREGISTRY_VERSION}"
    python = _venv_python(env)
    if _has_toolregistry(python):
        return python
    steps: list[list[str]] = []
    if not python.exists():
        steps.append([sys.executable, "-m", "venv", str(env)])
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    steps.append([*pip, f"toolregistry=={TOOLREGISTRY_VERSION}"])
    with console.status(f"Making ToolRegistry {TOOLREGISTRY_VERSION}'s venv in {env} ..."):
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=900)
            except subprocess.TimeoutExpired as exc:
                raise BenchError(f"{' '.join(step)!r} took too long") from exc
            if done.returncode != 0:
                raise BenchError(f"{' '.join(step)!r} failed:\n{done.stdout}{done.stderr}")
    if not _has_toolregistry(python):
        raise BenchError(f"toolregistry=={TOOLREGISTRY_VERSION} is not importable by {python}")
    return python


class Peer:
    """The ToolRegistry peer process; one command at a time, answers read line by line."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self._process = process
        self._log_path = log_path
        self.version = ""

    async def request(self, command: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """Send one command and return the peer's answer."""
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(command).encode() + b"\n")
            await stdin.drain()
        except ConnectionError:
            raise BenchError(f"the ToolRegistry peer exited; see {self._log_path}") from None
        return await self.read_answer(timeout_s=timeout_s)

    async def read_answer(self, *, timeout_s: float) -> dict[str, Any]:
        """Return the peer's next answer line; raise `BenchError` if it is a failure."""
        stdout = self._process.stdout
        assert stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                line = await stdout.readline()
        except TimeoutError:
            raise BenchError(
                f"the ToolRegistry peer did not answer within {timeout_s:g} s; see {self._log_path}"
            ) from None
        if not line:
            raise BenchError(f"the ToolRegistry peer exited; see {self._log_path}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise BenchError(f"the ToolRegistry peer failed: {answer.get('error')}")
        return answer

    async def run(self, registry: str, variant: Variant, calls: list[dict[str, Any]]) -> float:
        """Run one batch in the peer and return the seconds it measured around the call."""
        command = {
            "op": "run",
            "registry": registry,
            "api": variant.api,
            "mode": variant.mode,
            "calls": calls,
        }
        answer = await self.request(command, timeout_s=_PEER_REPLY_TIMEOUT_S)
        if answer["failed"]:
            raise BenchError(
                f"{answer['failed']} ToolRegistry calls of {registry} via {variant.label} "
                f"failed, e.g. {answer['errors']}"
            )
        return float(answer["elapsed_s"])

    async def aclose(self) -> None:
        """Ask the peer to quit, and kill it if it does not within 10 s. Idempotent."""
        process = self._process
        if process.returncode is None:
            with contextlib.suppress(OSError, RuntimeError):  # a pipe the peer already closed
                assert process.stdin is not None
                process.stdin.write(b'{"op": "quit"}\n')
                await process.stdin.drain()
                process.stdin.close()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
        await process.wait()


def _open_log(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")


@contextlib.asynccontextmanager
async def open_peer(
    python: Path, log_path: Path, *, env: Mapping[str, str] | None = None
) -> AsyncIterator[Peer]:
    """Start the peer, wait for its greeting, and stop it on the way out, even on errors.

    Args:
        python: The interpreter of ToolRegistry's venv.
        log_path: Where the peer's stderr goes.
        env: The peer's environment; defaults to this process's.
    """
    log = _open_log(log_path)
    try:
        process = await asyncio.create_subprocess_exec(
            str(python),
            str(_PEER_SCRIPT),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            cwd=str(log_path.parent),
            env=None if env is None else dict(env),
        )
        peer = Peer(process, log_path)
        try:
            greeting = await peer.read_answer(timeout_s=_PEER_START_TIMEOUT_S)
            peer.version = str(greeting.get("version", ""))
            yield peer
        finally:
            await peer.aclose()
    finally:
        log.close()


# -- measuring ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Side:
    role: Literal["corral", "peer", "reference"]
    label: str
    run: Callable[[list[dict[str, Any]]], Awaitable[float]]


def _corral_registry(workload: Workload) -> corral.ToolRegistry:
    # In process mode the registry's own mode makes `start()` warm the pool and preload the
    # tools' module in every worker, so no round pays for a worker start or an import.
    reg = corral.ToolRegistry(mode="process" if workload.corral_mode == "process" else "auto")
    for fn in (*bt.ARITHMETIC, bt.sleep_blocking, bt.sleep_async):
        reg.register(fn, read_only=True)  # pure or harmless: nothing to serialize them on
    return reg


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


def _peer_side(workload: Workload, peer: Peer, variant: Variant) -> _Side:
    async def run(calls: list[dict[str, Any]]) -> float:
        return await peer.run(workload.key, variant, calls)

    return _Side("peer", variant.label, run)


async def _bare_sleeps(calls: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for index in range(len(calls)):
            tg.create_task(bt.sleep_async(index))
    return time.perf_counter() - started


def _sides(workload: Workload, reg: corral.ToolRegistry, peer: Peer | None) -> list[_Side]:
    sides = [_corral_side(workload, reg)]
    if peer is not None:
        sides += [_peer_side(workload, peer, v) for v in workload.variants]
    if _has_reference(workload):
        sides.append(_Side("reference", "asyncio TaskGroup, no registry", _bare_sleeps))
    return sides


def _has_reference(workload: Workload) -> bool:
    """Whether the workload also times bare coroutines, the floor the event loop sets."""
    return workload.kind == "sleep_async"


async def _measure(
    workload: Workload,
    options: BenchOptions,
    peer: Peer | None,
    advance: Callable[[], None],
    rng: random.Random,
) -> WorkloadResult:
    """Run warm-up then measured rounds; each round runs one batch per side in random order."""
    async with _corral_registry(workload) as reg:
        sides = _sides(workload, reg, peer)
        samples: dict[str, list[float]] = {side.label: [] for side in sides}
        for round_ in range(options.warmup + options.rounds):
            calls = make_calls(workload.kind, rng)
            order = list(sides)
            rng.shuffle(order)
            for side in order:
                elapsed = await side.run(calls)
                if round_ >= options.warmup:
                    samples[side.label].append(elapsed)
                advance()
    by_role: dict[str, list[Samples]] = {"corral": [], "peer": [], "reference": []}
    for side in sides:
        by_role[side.role].append(Samples(side.label, tuple(samples[side.label])))
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


async def _measure_all(
    options: BenchOptions, console: Console, peer: Peer | None
) -> list[WorkloadResult]:
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

            results.append(await _measure(workload, options, peer, advance, rng))
    return results


async def _mixed_batch(workdir: Path) -> corral.ToolResults:
    async with demo_registry(workdir) as reg:
        return await reg.execute(DEMO_CALLS, timeout=30)


async def _bench(
    options: BenchOptions, console: Console, python: Path | None, bench_dir: Path, workdir: Path
) -> tuple[list[WorkloadResult], corral.ToolResults, str | None]:
    """Measure every workload, peer alongside if there is one, then run one mixed batch."""
    try:
        async with asyncio.timeout(options.max_seconds):
            if python is None:
                results = await _measure_all(options, console, None)
                version = None
            else:
                log_path = bench_dir / f"toolregistry-{TOOLREGISTRY_VERSION}" / "peer.log"
                async with open_peer(python, log_path) as peer:
                    results = await _measure_all(options, console, peer)
                    version = peer.version
            mixed = await _mixed_batch(workdir)
    except TimeoutError:
        raise BenchError(f"stopped: the run took longer than {options.max_seconds:g} s") from None
    return results, mixed, version


# -- reporting ---------------------------------------------------------------------------------


def _ms(samples: Samples) -> str:
    return f"{samples.median_ms:.1f} ({samples.p90_ms:.1f})"


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
        if r.passed is None:
            verdict = "[dim]no peer[/dim]"
        else:
            verdict = "[green]pass[/green]" if r.passed else "[red]FAIL[/red]"
        if r.within_ideal is False:
            verdict += f" [red](corral {r.corral.median_ms:.1f} ms > ideal + 15%)[/red]"
        table.add_row(
            r.workload.title,
            _ms(r.corral),
            "-" if best is None else _ms(best),
            "-" if best is None else best.label,
            "-" if ratio is None else f"{ratio:.1f}x",
            r.workload.target,
            verdict,
        )
    return table


def detail_table(results: Sequence[WorkloadResult]) -> Table:
    """Return one row per side of each workload: API and mode, median, p90, min."""
    table = Table(title="every side measured, ms per batch")
    table.title_justify = "left"
    for column in ("workload", "side", "API (mode)", "median", "p90", "min", "n"):
        numeric = column in ("median", "p90", "min", "n")
        table.add_column(column, no_wrap=True, justify="right" if numeric else "left")
    for r in results:
        rows = [("corral", r.corral), *(("ToolRegistry", p) for p in r.peers)]
        if r.reference is not None:
            rows.append(("reference", r.reference))
        best = r.best_peer
        for side, s in rows:
            mark = " *" if s is best else ""
            table.add_row(
                r.workload.title,
                side,
                s.label + mark,
                f"{s.median_ms:.1f}",
                f"{s.p90_ms:.1f}",
                f"{min(s.seconds) * 1000:.1f}",
                str(len(s.seconds)),
                end_section=s is rows[-1][1],
            )
    table.caption = "* ToolRegistry's faster API, the one the ratio uses"
    return table


def _environment(options: BenchOptions, version: str | None) -> dict[str, Any]:
    return {
        "corral": corral.__version__,
        "toolregistry": version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "batch_size": BATCH_SIZE,
        "rounds": options.rounds,
        "warmup_rounds": options.warmup,
        "seed": options.seed,
    }


def _print_report(
    report: BenchReport, mixed: corral.ToolResults, workdir: Path, console: Console
) -> None:
    env = report.environment
    title = "one mixed batch (the demo's 11 calls): what overlapped, who waited for what"
    console.print(timeline_table(mixed, title=title, base=str(workdir)))
    console.print(detail_table(report.results))
    console.print(summary_table(report.results))
    console.print(
        f"Medians of {env['rounds']} rounds, after {env['warmup_rounds']} warm-up round(s); in "
        "each round every side ran the same batch, in random order, timed around its own execute "
        "call only. ratio = ToolRegistry's faster API / corral. "
        f"Python {env['python']}, {env['cpus']} CPUs, ToolRegistry {env['toolregistry'] or '-'}."
    )
    for r in report.results:
        if r.reference is not None and r.workload.ideal_ms is not None:
            console.print(
                f"{r.workload.title}: ideal {r.workload.ideal_ms:.0f} ms; 100 bare coroutines in "
                f"an asyncio TaskGroup take {r.reference.median_ms:.1f} ms here."
            )


def run_tools_bench(options: BenchOptions, *, console: Console | None = None) -> BenchReport:
    """Run `corral bench tools`: measure, print the tables, and write JSON if asked.

    Makes ToolRegistry's venv first if `options.peer` and it is missing (needs PyPI). The peer
    process is stopped before this returns, also on errors and Ctrl-C.

    Raises:
        UsageError: a bad option.
        BenchError: the peer environment or a side's calls failed.
    """
    if options.rounds < 1 or options.warmup < 0:
        raise corral.UsageError(
            f"rounds must be >= 1 and warmup >= 0, got {options.rounds} and {options.warmup}"
        )
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=170)
    bench_dir = options.bench_dir or _default_bench_dir()
    python = ensure_peer_env(bench_dir, console) if options.peer else None
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        workdir = Path(os.path.realpath(tmp))
        results, mixed, version = asyncio.run(_bench(options, console, python, bench_dir, workdir))
    report = BenchReport(tuple(results), _environment(options, version))
    _print_report(report, mixed, workdir, console)
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        console.print(f"Results written to {options.json_path}")
    return report
