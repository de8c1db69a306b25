"""The calculator servers the remote workloads call: started by the bench, always stopped by it.

Each server is a child process running `_calculator_server.py` with this interpreter; it binds a
free port on 127.0.0.1 and announces it. Both corral and the ToolRegistry peer call the same
server process, so neither side gets a warmer or a colder server. The server stops by itself
when its stdin closes, and the bench also terminates, then kills, it on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from corral.cli.bench._peer import open_log
from corral.cli.bench._workloads import BenchError, Source, Workload

__all__ = ["API_OF", "Server", "ServerStats", "open_servers", "require_server_modules"]

API_OF: dict[Source, Literal["openapi", "mcp"]] = {
    "openapi": "openapi",
    "mcp-sse": "mcp",
    "mcp-http": "mcp",
}
"""Which server process serves a workload's source: MCP's two transports share one."""
_PATH_OF: dict[Source, str] = {"openapi": "/openapi.json", "mcp-sse": "/sse", "mcp-http": "/mcp"}
_MODULES = {"openapi": ("fastapi", "uvicorn"), "mcp": ("mcp", "uvicorn")}
_SCRIPT = Path(__file__).with_name("_calculator_server.py")
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 5.0
_STATS_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class ServerStats:
    """The server's CPU seconds so far, and how many tool calls it has served."""

    cpu_s: float
    calls: int


class Server:
    """One running calculator server, and a client of its own for `/_stats`."""

    def __init__(
        self, api: str, process: asyncio.subprocess.Process, port: int, log_path: Path
    ) -> None:
        self.api = api
        self.process = process
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._stats_client = httpx.AsyncClient(base_url=self.base_url, timeout=_STATS_TIMEOUT_S)

    def url(self, source: Source) -> str:
        """Return where a client registers `source` from: the spec, the SSE or the MCP URL."""
        return self.base_url + _PATH_OF[source]

    async def stats(self) -> ServerStats:
        """Return the server's CPU time and calls served, from `GET /_stats`."""
        try:
            response = await self._stats_client.get("/_stats")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise BenchError(
                f"the {self.api} calculator server does not answer ({exc!r}); see {self.log_path}"
            ) from exc
        data = response.json()
        return ServerStats(float(data["cpu_s"]), int(data["calls"]))

    async def wait_ready(self) -> None:
        """Wait until `/_stats` answers: the app's start-up (its lifespan) is done."""
        async with asyncio.timeout(_START_TIMEOUT_S):
            while True:
                if self.process.returncode is not None:
                    raise BenchError(
                        f"the {self.api} calculator server exited with "
                        f"{self.process.returncode}; see {self.log_path}"
                    )
                try:
                    await self.stats()
                except BenchError:
                    await asyncio.sleep(0.05)  # polling start-up, bounded by the timeout
                else:
                    return

    async def aclose(self) -> None:
        """Stop the server: close its stdin, then terminate, then kill it. Idempotent."""
        await self._stats_client.aclose()
        process = self.process
        if process.returncode is None and process.stdin is not None:
            process.stdin.close()  # the server's cue to shut down gracefully
        for stop in (process.terminate, process.kill):
            try:
                async with asyncio.timeout(_STOP_TIMEOUT_S):
                    await process.wait()
                return
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    stop()
        await process.wait()


def require_server_modules(workloads: Iterable[Workload]) -> None:
    """Raise `BenchError` naming what this interpreter lacks to serve the remote workloads."""
    needed: set[str] = set()
    for w in workloads:
        if w.remote:
            needed.update(_MODULES[API_OF[w.source]])
    missing = sorted(m for m in needed if importlib.util.find_spec(m) is None)
    if missing:
        raise BenchError(
            f"the remote workloads need {', '.join(missing)} in this environment "
            "(pip install 'corral[dev]'), or run only the local ones: --workload local"
        )


async def _start(api: str, log_path: Path, max_seconds: float) -> Server:
    log = open_log(log_path)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(_SCRIPT),
            "--api",
            api,
            "--max-seconds",
            f"{max_seconds:g}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    finally:
        log.close()  # the child has its own copy of the descriptor
    try:
        assert process.stdout is not None
        async with asyncio.timeout(_START_TIMEOUT_S):
            line = await process.stdout.readline()
        port = int(json.loads(line)["port"])
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        if isinstance(exc, TimeoutError | ValueError | KeyError):
            raise BenchError(f"the {api} calculator server did not start; see {log_path}") from None
        raise
    return Server(api, process, port, log_path)


@contextlib.asynccontextmanager
async def open_servers(
    workloads: Iterable[Workload], log_dir: Path, *, max_seconds: float
) -> AsyncIterator[dict[str, Server]]:
    """Start one server per protocol the workloads need; stop them all on the way out.

    Args:
        workloads: The workloads to run; local ones need no server.
        log_dir: Where each server's stderr goes (`calculator-{api}.log`).
        max_seconds: The servers stop by themselves after this, whatever happens here.

    Yields:
        The running servers by API ("openapi", "mcp"); empty when no workload is remote.
    """
    apis = sorted({API_OF[w.source] for w in workloads if w.remote})
    started: dict[str, Server] = {}

    async def start(api: str) -> None:
        server = await _start(api, log_dir / f"calculator-{api}.log", max_seconds)
        started[api] = server  # stopped on the way out from now on, ready or not
        await server.wait_ready()

    try:
        # Started and stopped at once: each takes a second or two (mostly imports, and a
        # graceful shutdown), so the servers overlap instead of adding up.
        async with asyncio.TaskGroup() as tg:
            for api in apis:
                tg.create_task(start(api))
        yield dict(sorted(started.items()))
    finally:
        async with asyncio.TaskGroup() as tg:
            for server in started.values():
                tg.create_task(server.aclose())
