"""Where an MCP server is and how to reach it: stdio command, SSE or streamable HTTP URL.

How a URL's transport is chosen: a path ending in `/sse` is an SSE endpoint (the legacy HTTP+SSE
transport, whose servers conventionally serve it there); any other URL is tried as streamable
HTTP first and, if the server answers but not as streamable HTTP (a 4xx or a JSON-RPC error to
the handshake), as SSE, as the MCP specification's backwards-compatibility section suggests. The
transport that worked is kept for reconnects.
"""

from __future__ import annotations

import enum
import shlex
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import urlsplit

import anyio
import httpx2
from mcp.client import Transport
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from corral._types import AsyncResource
from corral.errors import UsageError

__all__ = ["Kind", "Target", "parse_target", "watched_transport"]

# The SDK's own defaults for HTTP transports: a server may hold a response stream open for long.
_HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)


class Kind(enum.Enum):
    """An MCP transport."""

    STDIO = "stdio"
    SSE = "sse"
    STREAMABLE_HTTP = "streamable HTTP"


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed `register_mcp` target: the transports to try, in order, and how to reach them."""

    kinds: tuple[Kind, ...]
    argv: tuple[str, ...] = ()
    url: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return shlex.join(self.argv) if self.argv else self.url


def parse_target(target: str | Sequence[str], headers: Mapping[str, str] | None) -> Target:
    """Read a command (a string split like a shell would, or an argv list) or an http(s) URL.

    Raises:
        UsageError: an empty command, a URL with no host, or headers for a stdio server.
    """
    if isinstance(target, str) and target.strip().lower().startswith(("http://", "https://")):
        url = target.strip()
        parts = urlsplit(url)
        if not parts.netloc:
            raise UsageError(f"MCP server URL {target!r} has no host")
        if parts.path.rstrip("/").endswith("/sse"):
            kinds: tuple[Kind, ...] = (Kind.SSE,)
        else:
            kinds = (Kind.STREAMABLE_HTTP, Kind.SSE)
        return Target(kinds, url=url, headers=dict(headers or {}))
    if isinstance(target, str):
        try:
            argv = tuple(shlex.split(target))
        except ValueError as exc:
            raise UsageError(f"cannot split MCP server command {target!r}: {exc}") from None
    elif isinstance(target, Sequence) and all(isinstance(a, str) for a in target):
        argv = tuple(target)
    else:
        raise UsageError(
            f"an MCP target must be a command (a string or a list of strings) or an http(s) URL, "
            f"got {target!r}"
        )
    if not argv or not argv[0]:
        raise UsageError(f"MCP server command {target!r} is empty")
    if headers:
        raise UsageError(
            f"headers apply to MCP servers reached over HTTP, not to the command "
            f"{shlex.join(argv)!r}"
        )
    return Target((Kind.STDIO,), argv=argv)


def watched_transport(target: Target, kind: Kind, on_end: Callable[[], None]) -> Transport:
    """Return the SDK transport for `target` over `kind`, calling `on_end` when its input ends.

    The end of the read stream is the first sign that the server went away (its process exited,
    its SSE stream closed): the connection marks the session dead then, so the next call opens
    a new one instead of failing on the old.
    """
    return _watched(_transport(target, kind), on_end)


@asynccontextmanager
async def _watched(inner: Transport, on_end: Callable[[], None]) -> AsyncIterator[Any]:
    async with inner as (read_stream, write_stream):
        yield _WatchedReadStream(read_stream, on_end), write_stream


@asynccontextmanager
async def _transport(target: Target, kind: Kind) -> AsyncIterator[Any]:
    if kind is Kind.STDIO:
        params = StdioServerParameters(command=target.argv[0], args=list(target.argv[1:]))
        # The SDK binds its default `errlog` when it is imported; pass the current stderr so the
        # server's log goes where this process's goes now (pytest's capture, say).
        async with stdio_client(params, errlog=sys.stderr) as streams:
            yield streams
    elif kind is Kind.SSE:
        async with sse_client(target.url, headers=dict(target.headers) or None) as streams:
            yield streams
    else:
        async with (
            httpx2.AsyncClient(headers=dict(target.headers), timeout=_HTTP_TIMEOUT) as client,
            streamable_http_client(target.url, http_client=client) as streams,
        ):
            yield streams


class _WatchedReadStream(AsyncResource):
    """A transport's read stream that reports its end (EOF, or closed under the reader)."""

    def __init__(self, inner: Any, on_end: Callable[[], None]) -> None:
        self._inner = inner
        self._on_end = on_end

    @property
    def last_context(self) -> Any:
        # The dispatcher reads the sender's contextvars from HTTP transports' streams.
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_end()
            raise

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._inner.__anext__()
        except (StopAsyncIteration, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_end()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()
