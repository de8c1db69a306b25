"""Serve a `ToolRegistry`'s tools as an MCP server, so any MCP client gets corral's scheduler.

Every `tools/call` runs through `ToolRegistry.execute` as a batch of one call: the tool runs in its
execution mode (the loop, a thread, a worker process), under its timeout and limits, and calls
that arrive together from one client or many run at once as their resources allow. The schemas
are the registry's; `readOnlyHint` is set for read-only tools; a failed call (an exception, a
timeout, bad arguments, an unknown tool) comes back as `isError` with the error's text.

    reg = corral.ToolRegistry()
    ...
    await serve_registry(reg, transport="http", port=8765)   # or "stdio"

`build_server` returns the SDK's low-level `Server`, `build_app` its streamable HTTP ASGI app (the
MCP endpoint at `/mcp`, for your own uvicorn or to mount in a larger app).
"""

from __future__ import annotations

try:
    import mcp  # noqa: F401  (checked first, for a clear message when the extra is missing)
except ImportError as exc:  # pragma: no cover - the test environment has the SDK
    raise ImportError("corral.mcp_server needs the MCP SDK: pip install 'corral[mcp]'") from exc

import asyncio
import contextlib
import signal
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import pydantic_core
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp_types import (
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    ToolAnnotations,
)
from mcp_types import Tool as MCPTool
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from corral import CorralError, Tool, ToolCall, ToolRegistry, ToolResult, UsageError, __version__

if TYPE_CHECKING:
    from mcp.server.context import ServerRequestContext
    from starlette.applications import Starlette

__all__ = ["build_app", "build_server", "serve_registry"]


def build_server(
    reg: ToolRegistry, *, name: str = "corral", instructions: str | None = None
) -> Server[Any]:
    """Return an MCP server (the SDK's low-level `Server`) whose tools are `reg`'s.

    The tool list is read on every `tools/list`, so tools registered later are offered too.
    """

    async def list_tools(
        ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        return ListToolsResult(tools=[_mcp_tool(tool) for tool in reg])

    async def call_tool(
        ctx: ServerRequestContext[Any], params: CallToolRequestParams
    ) -> CallToolResult:
        call = ToolCall(
            id=f"mcp-{uuid.uuid4().hex[:12]}", name=params.name, arguments=params.arguments or {}
        )
        try:
            (result,) = await reg.execute([call])
        except CorralError as exc:  # the registry is closed, say: still the caller's answer
            return _error(f"{type(exc).__name__}: {exc}")
        return _call_result(result, modern=ctx.protocol_version in MODERN_PROTOCOL_VERSIONS)

    def input_schema(tool_name: str) -> Mapping[str, Any] | None:
        return reg.get(tool_name).parameters if tool_name in reg else None

    return Server(
        name,
        version=__version__,
        instructions=instructions,
        get_tool_input_schema=input_schema,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def build_app(
    reg: ToolRegistry, *, path: str = "/mcp", host: str = "127.0.0.1", name: str = "corral"
) -> Starlette:
    """Return the streamable HTTP ASGI app serving `reg` at `path`.

    `host` is where it will listen: for loopback addresses the SDK turns on its DNS-rebinding
    protection. The app's lifespan runs the SDK's session manager, so serve it with lifespan on.
    """
    return build_server(reg, name=name).streamable_http_app(streamable_http_path=path, host=host)


async def serve_registry(
    reg: ToolRegistry,
    *,
    transport: Literal["stdio", "http"] = "stdio",
    host: str = "127.0.0.1",
    port: int = 8765,
    path: str = "/mcp",
    name: str = "corral",
) -> None:
    """Serve `reg` over MCP until stdin closes (stdio) or the server is stopped (http).

    Over stdio the process's stdout carries the protocol; while serving, the SDK points fd 1 at
    stderr so a tool's stray prints cannot corrupt it. Over HTTP, SIGINT and SIGTERM shut the
    server down gracefully and return (when this runs in the main thread; elsewhere cancel it).
    The registry is started here and left open: close it when this returns.
    """
    if transport not in ("stdio", "http"):
        raise UsageError(f"transport must be 'stdio' or 'http', got {transport!r}")
    await reg.start()
    if transport == "stdio":
        await _serve_stdio(build_server(reg, name=name))
    else:
        await _serve_http(build_app(reg, path=path, host=host, name=name), host, port)


async def _serve_stdio(server: Server[Any]) -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


async def _serve_http(app: Starlette, host: str, port: int) -> None:
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    http = uvicorn.Server(config)
    # uvicorn re-raises SIGINT/SIGTERM once it has shut down, which would kill the process
    # before the caller closes the registry; handle them here, as a request to stop.
    http.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, setattr, http, "should_exit", True)
        except (NotImplementedError, RuntimeError, ValueError):
            continue  # not the main thread, or no signals here: cancel the task to stop
        handled.append(signum)
    try:
        await http.serve()
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


def _mcp_tool(tool: Tool) -> MCPTool:
    return MCPTool(
        name=tool.name,
        description=tool.description or None,
        input_schema=tool.parameters,
        annotations=ToolAnnotations(read_only_hint=True) if tool.read_only else None,
    )


def _call_result(result: ToolResult, *, modern: bool) -> CallToolResult:
    text = result.content()
    if not result.ok:
        return _error(text)
    jsonable = pydantic_core.to_jsonable_python(result.value, fallback=repr)
    # structuredContent is any JSON value from protocol 2026-07-28, a JSON object before; a
    # string is already the text, and None is no value.
    if isinstance(jsonable, dict) or (
        modern and jsonable is not None and not isinstance(jsonable, str)
    ):
        structured = jsonable
    else:
        structured = None
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=structured
    )


def _error(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)
