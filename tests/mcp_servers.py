"""Real MCP servers for the tests, built with the official SDK.

In-process: `build_server(record_file)` and its `.streamable_http_app()` / `.sse_app()` under
`tests.servers.running_asgi`. As a subprocess (stdio, or HTTP that a test can kill and restart):

    python tests/mcp_servers.py --transport stdio|sse|http [--port N] [--record FILE]

This file runs as a script, so it imports only the SDK and the standard library at the top.
`--record FILE` makes the recording tools append one line per invocation to FILE, which outlives
the server process: that is how the tests count invocations across a crash and a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ImageContent, TextContent, ToolAnnotations

if TYPE_CHECKING:
    import corral

Then = Literal["return", "hang", "crash"]

READ_ONLY = ToolAnnotations(read_only_hint=True)
IDEMPOTENT = ToolAnnotations(idempotent_hint=True)


class _Meetings:
    """Server-side evidence of overlap: calls to `meet` wait until `n` of them have arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, int] = {}
        self.inside = 0
        self.peak = 0
        self.changed: asyncio.Condition | None = None

    async def meet(self, key: str, n: int, timeout_s: float) -> dict[str, int]:
        if self.changed is None:
            self.changed = asyncio.Condition()
        changed = self.changed
        self.arrived[key] = self.arrived.get(key, 0) + 1
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        try:
            async with changed:
                changed.notify_all()
                try:
                    async with asyncio.timeout(timeout_s):
                        await changed.wait_for(lambda: self.arrived[key] >= n)
                except TimeoutError:
                    raise ToolError(
                        f"only {self.arrived[key]} of {n} calls to meet({key!r}) were in flight "
                        f"together within {timeout_s} s"
                    ) from None
        finally:
            self.inside -= 1
        return {"arrived": self.arrived[key], "peak": self.peak}


def _append(record: Path | None, tag: str) -> int:
    if record is None:
        raise ToolError("this server was started without --record")
    with record.open("a") as f:
        f.write(tag + "\n")
    return record.read_text().split().count(tag)


async def _act(then: Then) -> None:
    if then == "crash":
        os._exit(17)  # the server process dies mid-call, without answering
    if then == "hang":
        await asyncio.Event().wait()


def build_server(record_file: Path | None = None) -> MCPServer:
    """Return the test server; `record_file` is where the recording tools append."""
    mcp = MCPServer("corral-test", log_level="WARNING")
    meetings = _Meetings()

    @mcp.tool(annotations=READ_ONLY)
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @mcp.tool(structured_output=False)
    def shout(text: str) -> str:
        """Upper-case the text (no annotations: an undeclared tool)."""
        return text.upper()

    @mcp.tool(annotations=READ_ONLY, structured_output=False)
    def pieces() -> list[Any]:
        """Return two text blocks and an image block."""
        image = base64.b64encode(b"png").decode()
        return [
            TextContent(type="text", text="first"),
            TextContent(type="text", text="second"),
            ImageContent(type="image", data=image, mime_type="image/png"),
        ]

    @mcp.tool(annotations=READ_ONLY, structured_output=False)
    def lines() -> list[str]:
        """Return three text blocks."""
        return ["one", "two", "three"]

    @mcp.tool()
    def fail(message: str) -> str:
        """Fail with `message`."""
        raise ToolError(message)

    @mcp.tool(annotations=READ_ONLY)
    async def meet(key: str, n: int, timeout_s: float = 5.0) -> dict[str, int]:
        """Wait until `n` calls with this key are in flight together."""
        return await meetings.meet(key, n, timeout_s)

    @mcp.tool()
    async def meet_plain(key: str, n: int, timeout_s: float = 5.0) -> dict[str, int]:
        """`meet`, without annotations."""
        return await meetings.meet(key, n, timeout_s)

    @mcp.tool(annotations=READ_ONLY)
    async def hang() -> str:
        """Never answer."""
        await asyncio.Event().wait()
        return "unreachable"

    @mcp.tool()
    async def record(tag: str, then: Then = "return") -> int:
        """Append `tag` to the record (not idempotent), then return, hang or crash."""
        count = _append(record_file, tag)
        await _act(then)
        return count

    @mcp.tool(annotations=IDEMPOTENT)
    async def record_idempotent(tag: str, first: Then = "return") -> int:
        """Append `tag`; on its first invocation only, then return, hang or crash."""
        count = _append(record_file, tag)
        if count == 1:
            await _act(first)
        return count

    return mcp


async def wait_listening(
    port: int, proc: asyncio.subprocess.Process, timeout_s: float = 20
) -> None:
    """Wait, at most `timeout_s`, until the server process `proc` accepts connections on `port`."""
    async with asyncio.timeout(timeout_s):
        while True:
            if proc.returncode is not None:
                raise AssertionError(f"the server exited with {proc.returncode} before it listened")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)  # polling a condition, bounded by the timeout
                continue
            writer.close()
            await writer.wait_closed()
            return


def recorded(record: Path) -> list[str]:
    """Return the tags recorded so far, in order."""
    return record.read_text().split() if record.exists() else []


def corral_registry() -> corral.ToolRegistry:
    """A corral registry for `corral mcp serve --tools tests.mcp_servers:corral_registry`."""
    import corral

    reg = corral.ToolRegistry()
    meetings = _Meetings()

    @reg.tool(read_only=True)
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @reg.tool
    def greet(name: str) -> dict[str, str]:
        """Greet someone."""
        return {"greeting": f"hello {name}"}

    @reg.tool
    def boom(message: str) -> None:
        """Raise ValueError(message)."""
        raise ValueError(message)

    @reg.tool(read_only=True)
    async def meet(key: str, n: int, timeout_s: float = 5.0) -> dict[str, int]:
        """Wait until `n` calls with this key are in flight together."""
        return await meetings.meet(key, n, timeout_s)

    @reg.tool(read_only=True, timeout=0.2)
    async def hang() -> None:
        """Never answer (its registry timeout ends it)."""
        await asyncio.Event().wait()

    return reg


def main() -> None:
    """Serve `build_server` over the transport named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transport", choices=["stdio", "sse", "http"], default="stdio")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args()
    server = build_server(args.record)
    if args.transport == "stdio":
        server.run("stdio")
        return
    import uvicorn

    app = server.sse_app() if args.transport == "sse" else server.streamable_http_app()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
