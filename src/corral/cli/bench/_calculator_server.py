"""The calculator servers of `corral bench tools`: add, subtract, multiply, divide, remotely.

Run as a script by the bench, one process per protocol, never importing corral (the script's
directory is `sys.path[0]`, so `_bench_tools` is the very module both registries call locally):

    python _calculator_server.py --api openapi|mcp [--max-seconds S]

- `openapi`: a FastAPI app; each operation is `GET /{name}?a=..&b=..` answering the number, and
  `/openapi.json` describes them. GET because computing a sum reads nothing and changes nothing:
  a client that schedules by HTTP method (corral) may run them all at once.
- `mcp`: an MCP SDK server with the four tools, each declaring `readOnlyHint`, over SSE
  (`/sse`) and streamable HTTP (`/mcp`) from the same process.

The server binds a free port on 127.0.0.1 itself and writes `{"port": N}` as its first stdout
line, so no other process can take the port between choosing and binding it. `GET /_stats`
(outside the API) answers `{"cpu_s": ..., "calls": ...}`: the process's CPU time and the tool
calls served so far. It stops when its stdin closes (the bench exited, however it exited), on
SIGINT/SIGTERM, or after `--max-seconds`. So that the server is not what limits a batch,
handlers are async (no thread hop), uvicorn runs without access log, and uvloop and httptools
are used where they are installed (uvicorn's "standard" extras).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import _bench_tools  # type: ignore[import-not-found]
import uvicorn

Handler = Callable[[float, float], Awaitable[float]]


class Counter:
    """Tool calls served, for `/_stats`."""

    calls = 0


def _stats() -> dict[str, Any]:
    return {"cpu_s": time.process_time(), "calls": Counter.calls}


def _handler(fn: Callable[[float, float], float]) -> Handler:
    # Async, so neither server hands these microsecond calls to a thread pool.
    async def handler(a: float, b: float) -> float:
        Counter.calls += 1
        return float(fn(a, b))

    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


def openapi_app() -> Any:
    """Return the calculator as a FastAPI app."""
    from fastapi import FastAPI

    app = FastAPI(title="calculator", version="1.0")
    for fn in _bench_tools.ARITHMETIC:
        app.get(f"/{fn.__name__}", operation_id=fn.__name__, summary=fn.__doc__)(_handler(fn))
    app.get("/_stats", include_in_schema=False)(_stats)
    return app


def mcp_app() -> Any:
    """Return the calculator as one ASGI app serving MCP over SSE and streamable HTTP."""
    from mcp.server.mcpserver import MCPServer
    from mcp_types import ToolAnnotations
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    server = MCPServer("calculator", log_level="WARNING")
    read_only = ToolAnnotations(read_only_hint=True)
    for fn in _bench_tools.ARITHMETIC:
        server.tool(annotations=read_only)(_handler(fn))

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(_stats())

    server.custom_route("/_stats", methods=["GET"])(stats)
    app = server.streamable_http_app()  # its lifespan runs the streamable HTTP sessions
    paths = {getattr(route, "path", None) for route in app.router.routes}
    app.router.routes.extend(
        route for route in server.sse_app().routes if getattr(route, "path", None) not in paths
    )
    return app


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


def _stdin_is_stream() -> bool:
    # Only a pipe or socket can be watched for its end; a file or terminal leaves the time limit.
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def _stop_when_told(server: uvicorn.Server, max_seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max_seconds):
            if _stdin_is_stream():
                await _stdin_closed()
            else:
                await asyncio.Event().wait()
    server.should_exit = True


async def serve(app: Any, max_seconds: float) -> None:
    """Serve `app` on a free port of 127.0.0.1, announced on stdout, until told to stop."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it a keep-alive response waits ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        backlog=1024,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    sys.stdout.write(json.dumps({"port": sock.getsockname()[1]}) + "\n")
    sys.stdout.flush()
    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(_stop_when_told(server, max_seconds))
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()


def main() -> None:
    """Serve the calculator over the protocol named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api", choices=["openapi", "mcp"], required=True)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    app = openapi_app() if args.api == "openapi" else mcp_app()
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        asyncio.run(serve(app, args.max_seconds))
    else:  # uvicorn's "standard" extras, where installed: uvloop, and httptools picked by uvicorn
        uvloop.run(serve(app, args.max_seconds))


if __name__ == "__main__":
    main()
