"""The server bench: processes, the load, the held streams, the report.

The clients speak HTTP through aiohttp rather than corral's own `AsyncClient` (httpx): the load
generator shares the machine's two cores with the server it measures, and aiohttp's client costs
the least CPU per request of the two, so the figures are more the server's and less the bench's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

from corral.cli.bench_server import _floor, _model
from corral.cli.bench_server._tools import TOOL_WAIT_S
from corral.errors import CorralError
from corral.server.settings import ServerSettings

__all__ = [
    "Instructions",
    "LevelFigures",
    "ServerBenchError",
    "ServerBenchFigures",
    "ServerBenchOptions",
    "StreamsFigures",
    "run_server_bench",
]

RUN_TIMEOUT_S = 60.0
"""A run that takes longer counts as an error (and is abandoned)."""
START_TIMEOUT_S = 60.0
CALLGRIND_START_TIMEOUT_S = 600.0
"""Under valgrind a process runs some 50 times slower: start-up included."""
CALLGRIND_WARMUP_RUNS = 3
TERMINAL = (b"done", b"error", b"cancelled")
API_KEY_ENV = "CORRAL_BENCH_MODEL_KEY"


class ServerBenchError(CorralError):
    """The bench could not run (a process did not start, a phase did not complete)."""


@dataclass(frozen=True, slots=True)
class ServerBenchOptions:
    """What to run: the client counts, the measured seconds per count, the held streams."""

    concurrency: Sequence[int] = (1, 10, 50, 200)
    seconds: float = 10.0
    warmup_s: float = 2.0
    streams: int = 1000
    first_chunk_ms: float = 50.0
    chunk_ms: float = 2.0
    database_url: str | None = None
    """None: a SQLite file in a temporary data directory (the server's default)."""
    floor: bool = False
    """Measure the floor (`_floor`, a bare relay doing a run's I/O and nothing else) in place of
    `corral serve`; no held streams, and no targets apply."""
    instruction_runs: int = 0
    """Runs (one client, after a warm-up) of a second server under valgrind's callgrind, whose
    instructions are counted: a figure of the server's work that the machine's speed does not
    move. 0: not measured."""


@dataclass(frozen=True, slots=True)
class LevelFigures:
    """The figures of one client count, over its measured window."""

    clients: int
    runs: int
    seconds: float
    ttfe_ms: tuple[float, float]
    """Time from sending the message to its first event: median, p99."""
    run_ms: tuple[float, float]
    """Whole run (session + message + stream to the end): median, p99."""
    errors: int
    error_samples: tuple[str, ...]
    server_cpu_ms_per_run: float
    client_cpu_ms_per_run: float
    model_cpu_ms_per_run: float
    """The fake model's CPU per run: its work per run is fixed, so how this moves between levels
    shows what the machine itself does to CPU per run (caches, frequency), apart from corral."""

    @property
    def runs_per_s(self) -> float:
        """Completed runs per second of the window."""
        return self.runs / self.seconds


@dataclass(frozen=True, slots=True)
class StreamsFigures:
    """The held streams: how many were open at once, and how they ended."""

    wanted: int
    open_at_once: int
    """The server's `corral_sse_streams` gauge while all were held."""
    held_at_model: int
    """Model calls in flight at the model (up to the server's cap on provider streams)."""
    queued_in_manager: int
    """Model calls waiting for a stream slot in the request manager."""
    open_s: float
    """From the first POST to every stream having its first event."""
    finished_ok: int
    errors: int
    error_samples: tuple[str, ...]
    rss_before_mb: float
    rss_held_mb: float


@dataclass(frozen=True, slots=True)
class Instructions:
    """Instructions per run, counted under callgrind over runs of one client."""

    server: float
    model: float
    """The fake model's: its work per run is fixed, so the ratio of the two is how many times
    the fake model's work the server does per run, whatever the machine's speed."""


@dataclass(frozen=True, slots=True)
class ServerBenchFigures:
    """Everything the bench measured."""

    levels: tuple[LevelFigures, ...]
    streams: StreamsFigures | None
    unavoidable_ms: float
    database: str
    instructions: Instructions | None = None
    """Instructions per run under callgrind (`instruction_runs`)."""
    floor: bool = False
    """The figures are the floor's (`ServerBenchOptions.floor`), not corral's."""


@dataclass(slots=True)
class _Sample:
    started: float
    ended: float
    ttfe_s: float


@dataclass(slots=True)
class _Tally:
    samples: list[_Sample] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(message)


class _Failed(Exception):
    pass


def _p99(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def _cpu_s(pid: int) -> float:
    """Return the user + system CPU seconds of a process (all its threads) from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(slots=True)
class _Process:
    name: str
    proc: asyncio.subprocess.Process
    log: Path

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


@contextlib.asynccontextmanager
async def _process(
    name: str, argv: list[str], log: Path, env: dict[str, str] | None = None
) -> AsyncIterator[_Process]:
    """Run a child process; on exit SIGTERM it, and SIGKILL it if it is not gone in 15 s."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    try:
        yield _Process(name, proc, log)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _wait_until_up(
    http: aiohttp.ClientSession, url: str, process: _Process, timeout_s: float = START_TIMEOUT_S
) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if process.proc.returncode is not None:
                raise ServerBenchError(
                    f"{process.name} exited with {process.proc.returncode}:\n{process.tail()}"
                )
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)


class Callgrind:
    """A process under valgrind's callgrind: the instructions it runs between two marks.

    valgrind runs the program in its own process (same pid); `callgrind_control` zeroes its
    counters and has it write them out, and the written totals are read back. Instruction counts
    repeat to within a fraction of a percent for the same work, on a machine whose speed moves
    CPU seconds by tens of percent.
    """

    def __init__(self, process: _Process, out: Path, control: str) -> None:
        self.process = process
        self._out = out
        self._control_path = control
        self._dumps = 0

    @staticmethod
    def tools() -> tuple[str, str]:
        """Return the paths of valgrind and callgrind_control.

        Raises:
            ServerBenchError: either is not on PATH.
        """
        valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
        if valgrind is None or control is None:
            raise ServerBenchError(
                "counting instructions needs valgrind and callgrind_control on PATH "
                "(Debian: apt-get install valgrind)"
            )
        return valgrind, control

    @classmethod
    @contextlib.asynccontextmanager
    async def run(
        cls, name: str, argv: list[str], root: Path, env: dict[str, str] | None = None
    ) -> AsyncIterator[Callgrind]:
        """Run `argv` under callgrind (stopped on exit, as `_process` stops a process)."""
        valgrind, control = cls.tools()
        out = root / f"{name.replace(' ', '-')}.callgrind"
        wrapped = [
            valgrind,
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            "--dump-instr=no",
            *argv,
        ]
        async with _process(name, wrapped, root / f"{out.name}.log", env) as process:
            yield cls(process, out, control)

    async def zero(self) -> None:
        """Start counting from 0 now."""
        await self._control("-z")

    async def dump(self) -> int:
        """Return the instructions run since `zero()` (or the start)."""
        await self._control("-d")
        self._dumps += 1
        dumped = self._out.with_name(f"{self._out.name}.{self._dumps}")
        try:
            return callgrind_total(dumped.read_text(errors="replace"))
        except (OSError, ValueError) as exc:
            raise ServerBenchError(f"callgrind's counts could not be read: {exc}") from exc

    async def _control(self, flag: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            self._control_path,
            flag,
            str(self.process.proc.pid),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(120):
                said, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ServerBenchError(f"callgrind_control {flag} did not answer in 120 s") from None
        if proc.returncode != 0:
            raise ServerBenchError(
                f"callgrind_control {flag} failed ({proc.returncode}): {said.decode()[-300:]}"
            )


def callgrind_total(text: str) -> int:
    """Return the instruction total of a callgrind output file.

    Raises:
        ValueError: the text has no `totals:` (or older `summary:`) line.
    """
    match = re.search(r"^(?:totals|summary): *(\d+)", text, re.MULTILINE)
    if match is None:
        raise ValueError("no 'totals:' line in callgrind's output")
    return int(match.group(1))


async def _create_key(database_url: str) -> str:
    from corral.state import SqlStore, upgrade

    await upgrade(database_url)
    store = await SqlStore.connect(database_url)
    try:
        tenant = f"bench-{os.getpid()}-{time.time_ns()}"
        await store.create_tenant(tenant, tenant_id=tenant)
        key, _ = await store.create_api_key(tenant, name="corral bench server")
        return str(key)
    finally:
        await store.aclose()


def _config(model_url: str) -> str:
    return textwrap.dedent(
        f"""
        [provider]
        provider = "openai"
        base_url = "{model_url}/v1"
        api_key_env = "{API_KEY_ENV}"

        [agents.calc]
        description = "Adds and multiplies, 20 ms per tool call."
        model = "bench-model"
        max_steps = 4
        tools = ["corral.cli.bench_server._tools:registry"]
        """
    ).lstrip()


class _Client:
    """One bench client: HTTP calls to the server with its key."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, key: str) -> None:
        self.http = http
        self.base_url = base_url
        self.headers = {"authorization": f"Bearer {key}"}
        self.sse_headers = {**self.headers, "accept": "text/event-stream"}

    async def create_session(self) -> str:
        url = f"{self.base_url}/sessions"
        async with self.http.post(url, json={"agent": "calc"}, headers=self.headers) as response:
            if response.status != 201:
                raise _Failed(f"POST /sessions: {response.status} {await response.text()}")
            return str((await response.json())["id"])

    async def stream(
        self, session_id: str, message: str, on_first: asyncio.Event | None = None
    ) -> tuple[float, str]:
        """Stream a message; return (seconds to the first event, the final answer's text)."""
        url = f"{self.base_url}/sessions/{session_id}/messages"
        sent = time.perf_counter()
        first: float | None = None
        event = b""
        async with self.http.post(url, json={"message": message}, headers=self.sse_headers) as r:
            if r.status != 200:
                raise _Failed(f"POST .../messages: {r.status} {(await r.text())[:200]}")
            async for line in r.content:
                if line.startswith(b"event: "):
                    event = line[7:].strip()
                elif line.startswith(b"data: "):
                    if first is None:
                        first = time.perf_counter() - sent
                        if on_first is not None:
                            on_first.set()
                    if event in TERMINAL:
                        data = json.loads(line[6:])
                        if event != b"done":
                            raise _Failed(f"the request ended {event.decode()}: {data}")
                        # The response ends right after its terminal event: read to its end, so
                        # the connection is kept for the next run, as an HTTP client's pool does.
                        await r.content.read()
                        return first, str(data["result"]["text"])
        raise _Failed("the stream ended without a terminal event")


def _ask() -> tuple[str, str]:
    a, b, c, d = (random.randint(-999, 999) for _ in range(4))
    return f"add {a} {b}, multiply {c} {d}", f"add={a + b} multiply={c * d}"


async def _one_run(client: _Client, tag: str) -> _Sample:
    started = time.perf_counter()
    session_id = await client.create_session()
    ask, want = _ask()
    ttfe, text = await client.stream(session_id, f"{tag}: {ask}")
    if text != want:
        raise _Failed(f"wrong answer {text!r}, wanted {want!r}")
    return _Sample(started, time.perf_counter(), ttfe)


async def _level(
    client: _Client, server_pid: int, model_pid: int, clients: int, options: ServerBenchOptions
) -> LevelFigures:
    tally = _Tally()
    stop = asyncio.Event()

    async def loop(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                async with asyncio.timeout(RUN_TIMEOUT_S):
                    tally.samples.append(await _one_run(client, f"c{clients}-{i}-{n}"))
            except (_Failed, aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                tally.error(f"{type(exc).__name__}: {exc}")

    async with asyncio.TaskGroup() as tg:
        for i in range(clients):
            tg.create_task(loop(i))
        await asyncio.sleep(options.warmup_s)
        cpu0, client0, t0 = _cpu_s(server_pid), time.process_time(), time.perf_counter()
        model0 = _cpu_s(model_pid)
        await asyncio.sleep(options.seconds)
        cpu1, client1, t1 = _cpu_s(server_pid), time.process_time(), time.perf_counter()
        model1 = _cpu_s(model_pid)
        stop.set()
    window = [s for s in tally.samples if t0 <= s.ended <= t1]
    # Runs that began in the window and ended in it give the latencies; the rate and the CPU
    # per run count every run that ended in the window (its work was mostly done in it).
    inside = [s for s in window if s.started >= t0] or window
    runs = len(window)
    return LevelFigures(
        clients=clients,
        runs=runs,
        seconds=t1 - t0,
        ttfe_ms=(
            statistics.median(s.ttfe_s for s in inside) * 1000 if inside else float("nan"),
            _p99([s.ttfe_s for s in inside]) * 1000,
        ),
        run_ms=(
            statistics.median(s.ended - s.started for s in inside) * 1000
            if inside
            else float("nan"),
            _p99([s.ended - s.started for s in inside]) * 1000,
        ),
        errors=tally.errors,
        error_samples=tuple(tally.error_samples),
        server_cpu_ms_per_run=(cpu1 - cpu0) / runs * 1000 if runs else float("nan"),
        client_cpu_ms_per_run=(client1 - client0) / runs * 1000 if runs else float("nan"),
        model_cpu_ms_per_run=(model1 - model0) / runs * 1000 if runs else float("nan"),
    )


async def _metric(http: aiohttp.ClientSession, base_url: str, key: str, name: str) -> float:
    async with http.get(
        f"{base_url}/metrics", headers={"authorization": f"Bearer {key}"}
    ) as response:
        text = await response.text()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    if match is None:
        raise ServerBenchError(f"/metrics has no {name}")
    return float(match.group(1))


async def _held_streams(
    http: aiohttp.ClientSession,
    client: _Client,
    model_url: str,
    server_pid: int,
    count: int,
) -> StreamsFigures:
    tally = _Tally()
    finished = 0
    rss_before = _rss_mb(server_pid)
    # Sessions first, 100 at a time, so that opening the streams is all that is measured.
    creating = asyncio.Semaphore(100)

    async def new_session() -> str:
        async with creating:
            return await client.create_session()

    async with asyncio.timeout(120):
        sessions = await asyncio.gather(*(new_session() for _ in range(count)))
    firsts = [asyncio.Event() for _ in range(count)]

    async def hold(i: int) -> None:
        nonlocal finished
        ask, want = _ask()
        try:
            async with asyncio.timeout(RUN_TIMEOUT_S + 60):
                _, text = await client.stream(sessions[i], f"hold {i}: {ask}", firsts[i])
            if text != want:
                raise _Failed(f"wrong answer {text!r}, wanted {want!r}")
            finished += 1
        except (_Failed, aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            tally.error(f"{type(exc).__name__}: {exc}")
        finally:
            firsts[i].set()  # a stream that failed before its first event releases the wait

    # The server's default cap on provider streams: the model calls beyond it wait in the
    # request manager's queue (their SSE streams open all the same), and the fake holds the rest.
    cap = ServerSettings.model_fields["max_concurrent_llm_streams"].default
    expect_held = min(count, cap)
    failure: str | None = None
    opened = rss_held = float("nan")
    held = open_now = queued = 0
    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for i in range(count):
            tg.create_task(hold(i))
        try:
            async with asyncio.timeout(60):
                for first in firsts:
                    await first.wait()
            opened = time.perf_counter() - started
            # The model calls reach the fake a moment after the first events: wait for them.
            async with asyncio.timeout(30):
                while held < expect_held:
                    async with http.get(f"{model_url}/stats") as response:
                        held = int((await response.json())["held"])
                    if held < expect_held:
                        await asyncio.sleep(0.1)
            key = client.headers["authorization"][7:]
            open_now = int(await _metric(http, client.base_url, key, "corral_sse_streams"))
            # Waiting for a provider stream: admitted but without a slot, or not yet admitted.
            gauges = {}
            for name in ("queued", "running", "streams_in_use"):
                gauges[name] = int(
                    await _metric(http, client.base_url, key, f"corral_manager_{name}")
                )
            queued = gauges["queued"] + gauges["running"] - gauges["streams_in_use"]
            rss_held = _rss_mb(server_pid)
        except TimeoutError:
            failure = (
                f"held streams: {sum(f.is_set() for f in firsts)} of {count} streams had their "
                f"first event, {held} of {expect_held} model calls reached the model"
            )
        finally:
            # Released in any case: every stream then ends, and the task group with them.
            async with http.post(f"{model_url}/release") as response:
                await response.read()
    if failure is not None:
        raise ServerBenchError(failure)
    return StreamsFigures(
        wanted=count,
        open_at_once=open_now,
        held_at_model=held,
        queued_in_manager=queued,
        open_s=opened,
        finished_ok=finished,
        errors=tally.errors,
        error_samples=tuple(tally.error_samples),
        rss_before_mb=rss_before,
        rss_held_mb=rss_held,
    )


def _model_argv(port: int, options: ServerBenchOptions) -> list[str]:
    return [
        sys.executable,
        "-m",
        _model.__name__,
        "--port",
        str(port),
        "--first-chunk-ms",
        str(options.first_chunk_ms),
        "--chunk-ms",
        str(options.chunk_ms),
    ]


def _server_argv(
    options: ServerBenchOptions, root: Path, name: str, model_url: str, port: int
) -> list[str]:
    """Return the command of the server measured: `corral serve` or the floor's bare relay.

    `corral serve` takes its port from the environment and its config from `<name>.toml`,
    written here.
    """
    if options.floor:
        return [
            sys.executable,
            "-m",
            _floor.__name__,
            "--port",
            str(port),
            "--model-url",
            model_url,
        ]
    config = root / f"{name}.toml"
    config.write_text(_config(model_url))
    return [
        sys.executable,
        "-c",
        "from corral.cli import main; main()",
        "serve",
        "--config",
        str(config),
    ]


async def measure(options: ServerBenchOptions, console: Console) -> ServerBenchFigures:
    """Start the fake model and the server, run every level and the held streams."""
    with tempfile.TemporaryDirectory(prefix="corral-bench-server-") as tmp:
        root = Path(tmp)
        database = options.database_url or f"sqlite+aiosqlite:///{root / 'data' / 'corral.db'}"
        (root / "data").mkdir()
        key = await _create_key(database)
        model_port, server_port = _free_port(), _free_port()
        model_url = f"http://127.0.0.1:{model_port}"
        base_url = f"http://127.0.0.1:{server_port}"
        model_argv = _model_argv(model_port, options)
        server_env = {
            API_KEY_ENV: "sk-bench",
            "CORRAL_PORT": str(server_port),
            "CORRAL_DATA_DIR": str(root / "data"),
            "CORRAL_DATABASE_URL": database,
            "CORRAL_LOG_LEVEL": "warning",
            "CORRAL_CREATE_DEV_KEY": "false",
            # Every other setting is the server's default, as a deployment runs it: the
            # request manager's caps are what keep the loop responsive when clients outnumber
            # the CPU.
        }
        server_argv = _server_argv(options, root, "corral", model_url, server_port)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            _process("the fake model", model_argv, root / "model.log") as model,
            _process("corral serve", server_argv, root / "server.log", server_env) as server,
        ):
            await _wait_until_up(http, f"{model_url}/stats", model)
            await _wait_until_up(http, f"{base_url}/readyz", server)
            client = _Client(http, base_url, key)
            levels = []
            for clients in options.concurrency:
                console.print(f"[dim]{clients} client(s): {options.seconds:g} s measured...[/]")
                levels.append(
                    await _level(client, server.proc.pid, model.proc.pid, clients, options)
                )
            streams = None
            if options.streams and not options.floor:
                console.print(f"[dim]{options.streams} streams held open...[/]")
                streams = await _held_streams(
                    http, client, model_url, server.proc.pid, options.streams
                )
            instructions = None
            if options.instruction_runs:
                console.print(
                    f"[dim]instructions: {options.instruction_runs} runs of a server, then of "
                    "the fake model, under callgrind (slow: valgrind runs each ~50x slower)...[/]"
                )
                instructions = await _instructions(http, root, server_env, options)
    unavoidable = (
        2 * options.first_chunk_ms
        + (_model.TOOL_CHUNKS - 1 + _model.TEXT_CHUNKS - 1) * options.chunk_ms
        + TOOL_WAIT_S * 1000
    )
    shown = database.split("///")[0] + "///..." if "sqlite" in database else database
    return ServerBenchFigures(
        tuple(levels), streams, unavoidable, shown, instructions, floor=options.floor
    )


async def _instructions(
    http: aiohttp.ClientSession,
    root: Path,
    server_env: dict[str, str],
    options: ServerBenchOptions,
) -> Instructions:
    """Count the instructions per run of the server and of the fake model, under callgrind.

    Each is counted in a pass of its own, a second server and a second model, one client,
    `options.instruction_runs` runs after a warm-up: the server beside a model at full speed
    (as in the levels), then the model beside a server at full speed. Both passes run on a
    database of their own on SQLite (the default): the levels filled theirs with thousands of
    sessions, and a deeper table costs more per write, so the count would depend on what ran
    first.
    """
    runs = options.instruction_runs

    @contextlib.asynccontextmanager
    async def pair(name: str, *, count_model: bool) -> AsyncIterator[tuple[_Client, Callgrind]]:
        port, model_port = _free_port(), _free_port()
        base_url = f"http://127.0.0.1:{port}"
        model_url = f"http://127.0.0.1:{model_port}"
        argv = _server_argv(options, root, name, model_url, port)
        env = {**server_env, "CORRAL_PORT": str(port)}
        if options.database_url is None:
            data = root / f"{name}-data"
            data.mkdir()
            env["CORRAL_DATA_DIR"] = str(data)
            env["CORRAL_DATABASE_URL"] = f"sqlite+aiosqlite:///{data / 'corral.db'}"
        key = await _create_key(env["CORRAL_DATABASE_URL"])
        async with contextlib.AsyncExitStack() as stack:
            counted: list[Callgrind] = []

            async def start(
                what: str, argv: list[str], env: dict[str, str] | None, count: bool
            ) -> _Process:
                if count:
                    grind = Callgrind.run(f"{what} under callgrind", argv, root, env)
                    counted.append(await stack.enter_async_context(grind))
                    return counted[-1].process
                log = root / f"{name}-{what.replace(' ', '-')}.log"
                return await stack.enter_async_context(_process(f"{name} {what}", argv, log, env))

            model = await start("fake model", _model_argv(model_port, options), None, count_model)
            server = await start("server", argv, env, not count_model)
            await _wait_until_up(http, f"{model_url}/stats", model, CALLGRIND_START_TIMEOUT_S)
            await _wait_until_up(http, f"{base_url}/readyz", server, CALLGRIND_START_TIMEOUT_S)
            yield _Client(http, base_url, key), counted[0]

    async def count(name: str, *, count_model: bool) -> float:
        async with pair(name, count_model=count_model) as (client, grind):
            for i in range(CALLGRIND_WARMUP_RUNS):
                await _one_run(client, f"{name}-warm-{i}")
            await grind.zero()
            for i in range(runs):
                await _one_run(client, f"{name}-{i}")
            return await grind.dump() / runs

    return Instructions(
        server=await count("callgrind-server", count_model=False),
        model=await count("callgrind-model", count_model=True),
    )


def _info(figures: ServerBenchFigures) -> list[tuple[str, str]]:
    """Return the figures shown beside the verdict, not in it."""
    info: list[tuple[str, str]] = []
    # With one client the machine idles between a run's bursts of work, and the same work costs
    # more after idling (the model's column shows it): the loaded levels' worst, apart.
    loaded = [lv.server_cpu_ms_per_run for lv in figures.levels if lv.clients >= 10]
    if loaded and len(loaded) < len(figures.levels):
        info.append(("server CPU per run, 10 clients or more (worst)", f"{max(loaded):.2f} ms"))
    counted = figures.instructions
    if counted is not None:
        info.append(
            ("server instructions per run (callgrind, 1 client)", f"{counted.server / 1e6:.2f} M")
        )
        info.append(
            (
                "fake model instructions per run (callgrind, 1 client)",
                f"{counted.model / 1e6:.2f} M (server: {counted.server / counted.model:.2f}x)",
            )
        )
    return info


def report(figures: ServerBenchFigures, console: Console) -> bool:
    """Print the figures against the issue's targets; return whether all are met."""
    measured = (
        "the floor: a bare relay in corral serve's place"
        if figures.floor
        else f"corral bench server ({figures.database}"
    )
    table = Table(
        title=f"{measured}; {figures.unavoidable_ms:.0f} ms of unavoidable waiting per run)"
    )
    for column in (
        "clients",
        "runs/s",
        "first event ms (median / p99)",
        "run ms (median / p99)",
        "errors",
        "server CPU ms/run",
        "bench CPU ms/run",
        "model CPU ms/run",
    ):
        table.add_column(column, justify="right")
    for level in figures.levels:
        table.add_row(
            str(level.clients),
            f"{level.runs_per_s:.1f}",
            f"{level.ttfe_ms[0]:.1f} / {level.ttfe_ms[1]:.1f}",
            f"{level.run_ms[0]:.1f} / {level.run_ms[1]:.1f}",
            str(level.errors),
            f"{level.server_cpu_ms_per_run:.2f}",
            f"{level.client_cpu_ms_per_run:.2f}",
            f"{level.model_cpu_ms_per_run:.2f}",
        )
    console.print(table)
    for level in figures.levels:
        for sample in level.error_samples:
            console.print(f"[red]{level.clients} clients: {sample}[/]")
    checks: list[tuple[str, str, bool]] = []
    info = _info(figures)
    # The floor is measured for comparison: only its answers count (all right, no errors).
    worst_cpu = max((lv.server_cpu_ms_per_run for lv in figures.levels), default=float("nan"))
    if not figures.floor:
        checks.append(
            ("server CPU per run (worst level)", f"{worst_cpu:.2f} ms <= 5 ms", worst_cpu <= 5.0)
        )
    top = max(figures.levels, key=lambda lv: lv.clients, default=None)
    if top is not None and not figures.floor:
        checks.append(
            (
                f"p99 first event at {top.clients} clients",
                f"{top.ttfe_ms[1]:.1f} ms <= 250 ms",
                top.ttfe_ms[1] <= 250.0,
            )
        )
    errors = sum(lv.errors for lv in figures.levels)
    checks.append(("errors", f"{errors} == 0", errors == 0))
    streams = figures.streams
    if streams is not None:
        console.print(
            f"held streams: {streams.open_at_once} open at once on the server, all open in "
            f"{streams.open_s:.2f} s ({streams.held_at_model} model calls held at the model, "
            f"{streams.queued_in_manager} queued for a stream slot); "
            f"{streams.finished_ok} finished with the right answer, {streams.errors} errors; "
            f"server RSS {streams.rss_before_mb:.0f} -> {streams.rss_held_mb:.0f} MB"
        )
        for sample in streams.error_samples:
            console.print(f"[red]held streams: {sample}[/]")
        checks.append(
            (
                "SSE streams open at once",
                f"{streams.open_at_once} >= {streams.wanted}",
                streams.open_at_once >= streams.wanted and streams.finished_ok == streams.wanted,
            )
        )
    targets = Table(title="targets")
    for column in ("measure", "figure", "result"):
        targets.add_column(column)
    for name, figure, ok in checks:
        targets.add_row(name, figure, "[green]pass[/]" if ok else "[red]MISS[/]")
    for name, figure in info:
        targets.add_row(name, figure, "[dim]info[/]")
    console.print(targets)
    return all(ok for _, _, ok in checks)


def run_server_bench(options: ServerBenchOptions, console: Console | None = None) -> bool:
    """Measure and print; return whether every target was met."""
    console = console or Console()
    figures = asyncio.run(measure(options, console))
    return report(figures, console)
