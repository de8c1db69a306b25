"""Tools from an MCP server: one persistent session per server, calls multiplexed over it.

`register_mcp` opens the session (see `_mcp_connection` for how it is owned and reopened, and
`_mcp_transport` for how the transport is chosen), lists the server's tools and registers each as
a `Tool` whose call goes over that session:

- `readOnlyHint: true` makes a read-only tool, which runs beside everything; a tool without hints
  follows the registry's rule for undeclared tools.
- `readOnlyHint` or `idempotentHint` makes a call safe to retry once if the session drops while it
  is in flight; any other call fails with `OutcomeUnknown` instead, so it never runs twice.
- Arguments are checked against the tool's `inputSchema` before anything is sent.
- A result with `isError` raises `ServerToolError` with the server's text; otherwise the call
  returns `structuredContent` if the server sent it, else the text of the content blocks (all
  blocks as JSON objects when some are not text).
"""

from __future__ import annotations

try:
    import mcp  # noqa: F401  (checked first, for a clear message when the extra is missing)
except ImportError as exc:  # pragma: no cover - the test environment has the SDK
    raise ImportError("register_mcp needs the MCP SDK: pip install 'corral[mcp]'") from exc

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import jsonschema
from jsonschema.validators import validator_for
from mcp_types import CallToolResult, TextContent
from mcp_types import Tool as MCPTool

from corral._retry import Backoff
from corral.errors import ServerToolError, ToolArgumentsInvalid, UsageError
from corral.tools._home import proxy
from corral.tools._mcp_connection import MCPConnection
from corral.tools._mcp_transport import parse_target
from corral.tools._tool import Tool, check_name

if TYPE_CHECKING:
    from corral.tools._registry import ToolRegistry

__all__ = ["MCPConnection", "register_mcp", "tool_from_mcp"]

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_ERRORS_SHOWN = 10


async def register_mcp(
    reg: ToolRegistry,
    target: str | Sequence[str],
    *,
    namespace: str | None = None,
    headers: Mapping[str, str] | None = None,
    connect_timeout_s: float = 30.0,
    reconnect_window_s: float = 5.0,
    backoff: Backoff | None = None,
    handshake: Literal["auto", "legacy"] = "auto",
) -> list[Tool]:
    """Open a session to an MCP server and register its tools in `reg`; return them.

    Args:
        reg: The registry to add the tools to; its `aclose()` closes the session.
        target: A command for a stdio server (a string, split like a shell would, or an argv
            list), or the http(s) URL of an SSE endpoint (path ending in `/sse`) or a streamable
            HTTP endpoint (any other path; SSE is tried if the server does not speak it).
        namespace: Prefix for tool names (`f"{namespace}-{name}"`).
        headers: Sent with every HTTP request (auth, for instance).
        connect_timeout_s: Most seconds to start or reach the server and list its tools.
        reconnect_window_s: How long a call keeps trying to reopen a dropped session.
        backoff: Waits between reopening attempts.
        handshake: "auto" (the 2026-07-28 protocol if the server speaks it, else the initialize
            handshake) or "legacy" (always the initialize handshake).

    Returns after the session is open and the tools are listed.

    Raises:
        RemoteConnectError: the server could not be started or reached; names the target.
        UsageError: a bad target or namespace, or a tool name already registered.
    """
    if namespace is not None:
        check_name(namespace)
    spec = parse_target(target, headers)
    connection = MCPConnection(
        spec,
        connect_timeout_s=connect_timeout_s,
        reconnect_window_s=reconnect_window_s,
        backoff=backoff,
        handshake=handshake,
    )
    listed = await connection.open()
    added: list[Tool] = []
    try:
        tools = _build_tools(connection, listed, namespace)
        taken = [t.name for t in tools if t.name in reg]
        if taken:
            raise UsageError(
                f"MCP server {spec} offers tools that are already registered: "
                f"{', '.join(map(repr, taken))}; pass a namespace"
            )
        for tool in tools:
            reg.add(tool)
            added.append(tool)
        reg.attach(connection)
    except BaseException:
        for tool in added:
            reg.unregister(tool.name)
        await connection.aclose()
        raise
    logger.info("registered %d tools from MCP server %s", len(tools), spec)
    return tools


def _build_tools(
    connection: MCPConnection, listed: Sequence[MCPTool], namespace: str | None
) -> list[Tool]:
    tools = [tool_from_mcp(connection, mcp_tool, namespace=namespace) for mcp_tool in listed]
    seen: dict[str, str] = {}
    for tool, mcp_tool in zip(tools, listed, strict=True):
        if tool.name in seen:
            raise UsageError(
                f"MCP tools {seen[tool.name]!r} and {mcp_tool.name!r} both become {tool.name!r} "
                f"as corral tool names"
            )
        seen[tool.name] = mcp_tool.name
    return tools


def tool_from_mcp(
    connection: MCPConnection, mcp_tool: MCPTool, *, namespace: str | None = None
) -> Tool:
    """Build the `Tool` that calls `mcp_tool` over `connection`."""
    annotations = mcp_tool.annotations
    read_only = bool(annotations and annotations.read_only_hint)
    idempotent = bool(annotations and annotations.idempotent_hint)
    name = _local_name(mcp_tool.name, namespace)
    parameters = dict(mcp_tool.input_schema)
    return Tool(
        name=name,
        description=mcp_tool.description or mcp_tool.title or "",
        parameters=parameters,
        fn=RemoteCall(connection, mcp_tool.name, retry_safe=read_only or idempotent),
        is_async=True,
        validate=_validator(name, parameters),
        read_only=read_only,
        claims_fn=None,  # not read-only: the registry's rule for undeclared tools applies
        mode="async",
        process_capable=False,
        source="mcp",
    )


class RemoteCall:
    """The `fn` of an MCP tool: calls it over the shared connection and maps its result."""

    __slots__ = ("connection", "remote_name", "retry_safe")

    def __init__(self, connection: MCPConnection, remote_name: str, *, retry_safe: bool) -> None:
        self.connection = connection
        self.remote_name = remote_name
        self.retry_safe = retry_safe
        """Read-only or idempotent: retried once if the session drops while it is in flight."""

    async def __call__(self, **arguments: Any) -> Any:
        """Call the tool; raise `ServerToolError` with the server's text if it reports one."""
        loop = self.connection.loop
        if asyncio.get_running_loop() is not loop:
            # A batch that forced mode="thread" runs this on a worker thread's own loop; the
            # session lives on the loop that opened it.
            return await proxy(loop, self(**arguments))
        result = await self.connection.call_tool(
            self.remote_name, arguments, retry_safe=self.retry_safe
        )
        return result_value(result)

    def __repr__(self) -> str:
        return f"<RemoteCall {self.remote_name!r} on {self.connection.target}>"


def result_value(result: CallToolResult) -> Any:
    """Return what a call produced: structured content, else the content's text.

    Raises:
        ServerToolError: the result has `isError`; the message is the server's text.
    """
    if result.is_error:
        raise ServerToolError(_text(result) or "the MCP server reported an error with no text")
    if result.structured_content is not None:
        return result.structured_content
    blocks = result.content
    if not blocks:
        return None
    if all(isinstance(block, TextContent) for block in blocks):
        return _text(result)
    return [_block_json(block) for block in blocks]


def _text(result: CallToolResult) -> str:
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        else:
            parts.append(json.dumps(_block_json(block)))
    return "\n".join(parts)


def _block_json(block: Any) -> dict[str, Any]:
    data: dict[str, Any] = block.model_dump(mode="json", by_alias=True, exclude_none=True)
    return data


def _local_name(remote: str, namespace: str | None) -> str:
    """Return a provider-safe tool name: `_` for other characters, a hash suffix if too long."""
    name = f"{namespace}-{remote}" if namespace else remote
    safe = _UNSAFE.sub("_", name) or "_"
    if len(safe) > 64:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        safe = f"{safe[:55]}_{digest}"
    return check_name(safe)


def _validator(name: str, schema: dict[str, Any]) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """Return the check of a call's arguments against the tool's `inputSchema`."""
    try:
        cls = validator_for(schema)
        cls.check_schema(schema)
        validator: Any = cls(schema)
    except jsonschema.SchemaError as exc:
        logger.warning(
            "MCP tool %r has an invalid input schema; its arguments are sent unchecked: %s",
            name,
            exc.message,
        )
        validator = None

    def validate(arguments: Mapping[str, Any]) -> dict[str, Any]:
        kwargs = dict(arguments)
        if validator is None:
            return kwargs
        errors = sorted(validator.iter_errors(kwargs), key=lambda e: [str(p) for p in e.path])
        if errors:
            shown = "; ".join(_error_text(e) for e in errors[:_MAX_ERRORS_SHOWN])
            more = len(errors) - _MAX_ERRORS_SHOWN
            raise ToolArgumentsInvalid(
                f"arguments of tool {name!r} are invalid: {shown}"
                + (f" (and {more} more)" if more > 0 else "")
            )
        return kwargs

    return validate


def _error_text(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(part) for part in error.absolute_path)
    return f"{path}: {error.message}" if path else error.message
