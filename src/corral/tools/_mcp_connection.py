"""One MCP server connection: a persistent session, owned by a task, reopened after a drop.

The SDK's transports and `ClientSession` are anyio context managers whose task groups must be
entered and exited by the same task. So each session belongs to an owner task: it enters the
transport and the session, lists the tools, hands the `Client` over through a future, and then
waits inside the contexts until it is told to stop. Calls run in the callers' own tasks and only
send requests over the session, so many calls are in flight at once, multiplexed by JSON-RPC id;
nothing serialises them. `aclose()` stops every owner and awaits it.

When a session drops (the server's process exits, its stream ends, the HTTP server restarts)
the session is retired: it takes no new calls, and the next call opens a new one. A call that
was in flight when it dropped is retried once on the new session only if the tool is read-only or
idempotent; otherwise it fails with `OutcomeUnknown`, because the server may have run it, and
running a non-idempotent tool twice is worse than reporting that we cannot tell.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from typing import Any, Literal, Self

import pydantic
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, INVALID_REQUEST, CallToolResult, Implementation
from mcp_types import Tool as MCPTool

from corral import __version__
from corral._deadline import remaining_s
from corral._retry import Backoff
from corral._types import AsyncResource
from corral.errors import ClosedError, OutcomeUnknown, RemoteConnectError, RemoteToolError
from corral.executors.base import State, ensure_open
from corral.tools._home import proxy
from corral.tools._mcp_transport import Kind, Target, watched_transport

__all__ = ["MCPConnection", "MCPStatistics"]

logger = logging.getLogger(__name__)

_CLIENT_INFO = Implementation(name="corral", version=__version__)
_MAX_TOOL_PAGES = 100
"""A server whose tools/list never stops paginating cannot hang registration."""


@dataclass(frozen=True, slots=True)
class MCPStatistics:
    """A connection's sessions and calls; idle when no call is in flight."""

    state: str
    sessions_opened: int
    """Sessions opened so far: 1 plus the reconnects."""
    sessions_live: int
    """Owner tasks still running (an old session may drain while a new one serves)."""
    in_flight: int

    @property
    def idle(self) -> bool:
        """Whether no call is in flight."""
        return self.in_flight == 0


class _LinkState(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
    DRAINING = "draining"
    """Dropped or replaced: takes no new calls; stops once its calls in flight have ended."""
    ENDED = "ended"


class _Link:
    """One session, and the owner task that holds its contexts open."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.state = _LinkState.OPENING
        self.ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        # A failed opening whose callers all gave up must not be logged as never retrieved.
        self.ready.add_done_callback(_retrieve)
        self.stop = asyncio.Event()
        self.tools: list[MCPTool] = []
        self.in_flight = 0
        self.input_ended = False
        self.task: asyncio.Task[None] | None = None

    @property
    def client(self) -> Client:
        return self.ready.result()

    def opened(self, client: Client, tools: list[MCPTool]) -> None:
        self.tools = tools
        if self.state is _LinkState.OPENING:
            self.state = _LinkState.OPEN
        self.ready.set_result(client)
        # Abandoned meanwhile, or the server went away between answering tools/list and now.
        if self.input_ended or self.state is not _LinkState.OPEN:
            self.retire()

    def on_input_end(self) -> None:
        self.input_ended = True
        if self.state is _LinkState.OPEN:
            self.retire()

    def retire(self) -> None:
        if self.state in (_LinkState.OPENING, _LinkState.OPEN):
            self.state = _LinkState.DRAINING
        if self.in_flight == 0:
            self.stop.set()


class _Dropped(Exception):
    """The session dropped while a call was in flight (raised from the SDK's error)."""


class _Unknown(Exception):
    """The server refused a call, without running it, because it does not know the session."""


class _WrongTransport(Exception):
    """The server answered, but neither transport tried spoke MCP with it."""


class MCPConnection(AsyncResource):
    """A persistent MCP session to one server, reopened on the next call after it drops.

    Made inside a running event loop; its sessions live on that loop.

    Args:
        target: Where the server is.
        connect_timeout_s: Most seconds for one opening (process start or TCP connect, handshake
            and tools/list).
        reconnect_window_s: How long a call keeps trying to reopen a dropped session (with
            backoff) before it fails with `RemoteConnectError`; also bounded by the call's own
            deadline.
        backoff: Waits between reopening attempts.
        close_timeout_s: How long `aclose()` waits for a session to shut down before cancelling
            its owner task.
        handshake: "auto" (probe for the 2026-07-28 protocol, fall back to the initialize
            handshake) or "legacy" (the initialize handshake: stateful HTTP sessions).
    """

    def __init__(
        self,
        target: Target,
        *,
        connect_timeout_s: float = 30.0,
        reconnect_window_s: float = 5.0,
        backoff: Backoff | None = None,
        close_timeout_s: float = 10.0,
        handshake: Literal["auto", "legacy"] = "auto",
    ) -> None:
        self.target = target
        self._handshake = handshake
        self.loop = asyncio.get_running_loop()
        """The loop the sessions live on; calls from other loops are sent to it."""
        self._kinds = target.kinds
        self._connect_timeout_s = connect_timeout_s
        self._reconnect_window_s = reconnect_window_s
        self._backoff = backoff or Backoff(attempts=100, base_s=0.05, max_s=1.0)
        self._close_timeout_s = close_timeout_s
        self._state = State.NEW
        self._link: _Link | None = None
        self._owners: dict[asyncio.Task[None], _Link] = {}
        self._sessions_opened = 0
        self._in_flight = 0

    @property
    def transport(self) -> str | None:
        """The transport in use ("stdio", "sse", "streamable HTTP"), once a session has opened."""
        return self._kinds[0].value if len(self._kinds) == 1 else None

    # -- opening -------------------------------------------------------------------------------

    async def open(self) -> list[MCPTool]:
        """Open the first session and return the server's tools.

        Raises:
            RemoteConnectError: the server could not be started or reached, or failed the
                handshake; the message names the target.
        """
        ensure_open(self._state, f"the MCP connection to {self.target}")
        try:
            link = await self._join_or_open()
        except BaseException:
            await self.aclose()
            raise
        self._state = State.RUNNING
        return link.tools

    async def _join_or_open(self) -> _Link:
        """Wait for the session being opened, or open one; one attempt."""
        link = self._link
        if link is None or link.state in (_LinkState.DRAINING, _LinkState.ENDED):
            link = self._start_link()
        try:
            # Shielded: one caller's cancellation must not cancel an opening others share. The
            # owner task bounds the opening by `connect_timeout_s`.
            await asyncio.shield(link.ready)
        except RemoteConnectError as exc:
            raise RemoteConnectError(str(exc)) from exc.__cause__
        return link

    def _start_link(self) -> _Link:
        self._sessions_opened += 1
        link = _Link(self._sessions_opened)
        task = asyncio.create_task(
            self._own(link), name=f"corral-mcp-session-{link.number} {self.target}"
        )
        link.task = task
        self._owners[task] = link
        task.add_done_callback(self._forget)
        self._link = link
        return link

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._owners.pop(task, None)

    # -- the owner task ------------------------------------------------------------------------

    async def _own(self, link: _Link) -> None:
        """Hold one session open until told to stop (the body of the owner task)."""
        try:
            await self._serve_any(link)
        except Exception as exc:
            if not link.ready.done():
                reason = (
                    f"no answer to the handshake within {self._connect_timeout_s:g} s"
                    if isinstance(exc, TimeoutError)
                    else _describe(exc)
                )
                error = RemoteConnectError(f"cannot connect to MCP server {self.target}: {reason}")
                error.__cause__ = exc
                link.ready.set_exception(error)
            else:
                logger.info(
                    "MCP session %d to %s ended: %s", link.number, self.target, _describe(exc)
                )
        finally:
            link.state = _LinkState.ENDED
            if not link.ready.done():  # cancelled while opening
                link.ready.set_exception(
                    RemoteConnectError(f"opening a session to MCP server {self.target} stopped")
                )

    async def _serve_any(self, link: _Link) -> None:
        """Serve over the first transport that works (see `_mcp_transport` for the order)."""
        kinds = self._kinds
        failures: list[str] = []
        for kind in kinds:
            try:
                await self._serve(link, kind)
                return
            except Exception as exc:
                if link.ready.done():
                    raise
                failures.append(f"as {kind.value}: {_describe(exc)}")
                if kind is kinds[-1] or not _wrong_transport(exc):
                    if len(failures) == 1:
                        raise
                    raise _WrongTransport("; ".join(failures)) from exc

    async def _serve(self, link: _Link, kind: Kind) -> None:
        transport = watched_transport(self.target, kind, link.on_input_end)
        client_cm = Client(transport, mode=self._handshake, cache=None, client_info=_CLIENT_INFO)
        async with (
            asyncio.timeout(self._connect_timeout_s) as opening,
            client_cm as client,
        ):
            tools = await _list_tools(client)
            opening.reschedule(None)  # open: the session lives until it is told to stop
            self._kinds = (kind,)  # reopen over the transport that worked
            link.opened(client, tools)
            logger.debug("MCP session %d to %s is open (%s)", link.number, self.target, kind.value)
            await link.stop.wait()

    # -- calls ---------------------------------------------------------------------------------

    async def call_tool(
        self, name: str, arguments: dict[str, Any], *, retry_safe: bool
    ) -> CallToolResult:
        """Call tool `name` over the current session; reopen it first if it dropped.

        Cancellation-safe: a cancelled call is abandoned (the SDK tells the server) and the
        session stays open for the others.

        A call the server refuses for an unknown session (it restarted, or expired the session)
        never ran: it is sent again on a new session, whatever the tool.

        Raises:
            OutcomeUnknown: the session dropped while the call was in flight and the tool is
                neither read-only nor idempotent, so it was not retried.
            RemoteConnectError: the session could not be reopened in time, or dropped again
                during the retry.
            RemoteToolError: the server refused the request or answered it with an invalid
                result.
        """
        retried = resent = False
        while True:
            link = await self._live_link()
            try:
                return await self._call_on(link, name, arguments)
            except _Unknown as unknown:
                # The server refused the call, unrun, for a session it does not know (it
                # restarted, or expired the session): sending it on a new session is safe.
                if resent:
                    raise RemoteConnectError(
                        f"MCP server {self.target} refused tool {name!r} for an unknown session "
                        f"twice"
                    ) from unknown.__cause__
                resent = True
            except _Dropped as dropped:
                if not retry_safe:
                    raise OutcomeUnknown(
                        f"the connection to MCP server {self.target} broke while tool {name!r} "
                        f"was in flight: it may or may not have run, and it is neither read-only "
                        f"nor idempotent, so it was not retried"
                    ) from dropped.__cause__
                if retried:
                    raise RemoteConnectError(
                        f"the connection to MCP server {self.target} broke again while tool "
                        f"{name!r} was retried"
                    ) from dropped.__cause__
                retried = True
                logger.info("retrying %r on a new session to %s", name, self.target)

    async def _live_link(self) -> _Link:
        """Return an open session, reopening (with backoff, within the window) if it dropped."""
        ensure_open(self._state, f"the MCP connection to {self.target}")
        link = self._link
        if link is not None and link.state is _LinkState.OPEN:
            return link
        loop = asyncio.get_running_loop()
        window_end = loop.time() + self._reconnect_window_s
        attempt = 0
        while True:
            attempt += 1
            try:
                link = await self._join_or_open()
                if link.state is _LinkState.OPEN:
                    return link
                error = RemoteConnectError(
                    f"the session to MCP server {self.target} ended as soon as it opened"
                )
            except RemoteConnectError as exc:
                error = exc
            left = window_end - loop.time()
            call_left = remaining_s()
            if call_left is not None:
                left = min(left, call_left)
            delay = self._backoff.next_delay_s(attempt, remaining_s=left)
            if delay is None:
                raise error
            logger.debug("reconnecting to %s in %.2f s: %s", self.target, delay, error)
            await asyncio.sleep(delay)
            ensure_open(self._state, f"the MCP connection to {self.target}")

    async def _call_on(self, link: _Link, name: str, arguments: dict[str, Any]) -> CallToolResult:
        link.in_flight += 1
        self._in_flight += 1
        try:
            return await link.client.call_tool(name, arguments)
        except MCPError as exc:
            if _unknown_session(exc):
                link.retire()
                raise _Unknown from exc
            if exc.code != CONNECTION_CLOSED:
                raise RemoteToolError(
                    f"MCP server {self.target} refused the call to {name!r}: {exc.error.message} "
                    f"(JSON-RPC error {exc.code})"
                ) from exc
            link.retire()
            if self._state in (State.CLOSING, State.CLOSED):
                raise ClosedError(
                    f"the MCP connection to {self.target} was closed while tool {name!r} was in "
                    f"flight; it may or may not have run"
                ) from exc
            raise _Dropped from exc
        except (RuntimeError, pydantic.ValidationError) as exc:
            # The SDK checks results against the tool's output schema and the protocol.
            raise RemoteToolError(
                f"MCP server {self.target} answered the call to {name!r} with an invalid "
                f"result: {exc}"
            ) from exc
        finally:
            link.in_flight -= 1
            self._in_flight -= 1
            if link.state is _LinkState.DRAINING and link.in_flight == 0:
                link.stop.set()

    # -- lifecycle -----------------------------------------------------------------------------

    def statistics(self) -> MCPStatistics:
        """Return the sessions opened and live, and the calls in flight."""
        return MCPStatistics(
            state=self._state.value,
            sessions_opened=self._sessions_opened,
            sessions_live=len(self._owners),
            in_flight=self._in_flight,
        )

    async def aclose(self) -> None:
        """Close every session and await its owner task. Idempotent.

        A stdio server gets its stdin closed, then SIGTERM, then SIGKILL (the SDK's sequence);
        calls still in flight fail.
        """
        if self._state in (State.CLOSING, State.CLOSED):
            return
        if asyncio.get_running_loop() is not self.loop:
            if self.loop.is_running():  # closed from another thread's loop: close on ours
                await proxy(self.loop, self.aclose())
                return
            # The sessions' loop has stopped; `asyncio.run` cancelled their owners on its way out.
            self._state = State.CLOSED
            return
        self._state = State.CLOSING
        owners = dict(self._owners)
        for task, link in owners.items():
            link.retire()
            link.stop.set()
            if not link.ready.done():
                task.cancel()  # still opening: there is no session to close politely
        try:
            if owners:
                _, pending = await asyncio.wait(owners, timeout=self._close_timeout_s)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending)
        except BaseException:
            for task in owners:
                task.cancel()
            raise
        finally:
            self._state = State.CLOSED

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    def __repr__(self) -> str:
        return f"<MCPConnection {self.target} state={self._state.value}>"


async def _list_tools(client: Client) -> list[MCPTool]:
    tools: list[MCPTool] = []
    cursor: str | None = None
    for _ in range(_MAX_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return tools
    raise RemoteToolError(f"tools/list returned more than {_MAX_TOOL_PAGES} pages")


def _unknown_session(exc: MCPError) -> bool:
    """Whether a stateful server refused a request for a session it does not know.

    Streamable HTTP servers answer 404 for a session ID they no longer have (they restarted, or
    expired it); the SDK's transport reports that as INVALID_REQUEST, "Session not found" when
    the server sent a JSON-RPC body, "Session terminated" when not.
    """
    return exc.code == INVALID_REQUEST and "session" in exc.error.message.lower()


def _wrong_transport(exc: BaseException) -> bool:
    """Whether the server answered, just not in this transport's protocol (try the next one)."""
    return any(
        isinstance(leaf, MCPError) and leaf.code != CONNECTION_CLOSED for leaf in _leaves(exc)
    )


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _describe(exc: BaseException) -> str:
    """One line naming the underlying failures (the SDK wraps them in exception groups)."""
    parts: list[str] = []
    for leaf in _leaves(exc):
        text = f"{type(leaf).__name__}: {leaf}" if str(leaf) else type(leaf).__name__
        if text not in parts:
            parts.append(text)
    return "; ".join(parts)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
