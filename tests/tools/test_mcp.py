"""`register_mcp` against real MCP servers (the official SDK) over stdio, SSE and streamable HTTP.

Servers come from `tests/mcp_servers.py`: in-process under uvicorn (`running_asgi`) where the test
only needs a server, as subprocesses where it must die or restart. Starting one costs about 1.5 s
(importing the SDK), so each subprocess test starts as few as it can.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
from mcp_types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from mcp_types import Tool as MCPTool
from starlette.responses import PlainTextResponse

import corral
from corral import Status, ToolCall
from corral.errors import (
    ClosedError,
    RemoteConnectError,
    ServerToolError,
    ToolArgumentsInvalid,
    UsageError,
)
from corral.scheduler import EXCLUSIVE_RESOURCE, Claim
from corral.tools._mcp import RemoteCall, register_mcp, result_value, tool_from_mcp
from corral.tools._mcp_connection import MCPConnection
from corral.tools._mcp_transport import parse_target
from tests.mcp_servers import build_server, recorded, wait_listening
from tests.servers import free_port, running_asgi
from tests.support import eventually

SERVER = Path(__file__).resolve().parents[1] / "mcp_servers.py"
READ_ONLY = {"add", "pieces", "lines", "meet", "hang"}


def stdio_command(record: Path | None = None) -> list[str]:
    argv = [sys.executable, str(SERVER), "--transport", "stdio"]
    return argv + (["--record", str(record)] if record is not None else [])


def connection_of(reg: corral.ToolRegistry, tool: str = "add") -> MCPConnection:
    fn = reg.get(tool).fn
    assert isinstance(fn, RemoteCall)
    return fn.connection


def calls(*specs: tuple[str, str, dict[str, Any]], timeout: float | None = None) -> list[ToolCall]:
    return [ToolCall(id_, name, args, timeout=timeout) for id_, name, args in specs]


@asynccontextmanager
async def http_server(
    record: Path | None = None,
    *,
    sse_path: str | None = None,
    wrap: Callable[[Any], Any] | None = None,
    port: int | None = None,
) -> AsyncIterator[str]:
    """Serve the test server in this loop; yield its MCP endpoint's URL."""
    server = build_server(record)
    app = server.sse_app(sse_path=sse_path) if sse_path else server.streamable_http_app()
    async with running_asgi(app if wrap is None else wrap(app), port=port) as base:
        yield base + (sse_path or "/mcp")


@asynccontextmanager
async def server_process(
    port: int, record: Path, *, transport: str = "http"
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run the test server in a subprocess on `port`, for a test to kill; reaped on exit."""
    argv = [str(SERVER), "--transport", transport, "--port", str(port), "--record", str(record)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    try:
        await wait_listening(port, proc)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def error_of(result: corral.ToolResult) -> str | None:
    return result.error.type if result.error is not None else None


def server_processes() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]


# -- listing, schemas, annotations, results ----------------------------------------------------


async def test_stdio_lists_tools_multiplexes_calls_and_closes_cleanly() -> None:
    reg = corral.ToolRegistry()
    try:
        tools = await reg.register_mcp(stdio_command(), namespace="t")
        check_listing(reg, {t.name.removeprefix("t-"): t for t in tools})

        results = await reg.execute(
            calls(
                ("add", "t-add", {"a": 2, "b": 3}),
                ("shout", "t-shout", {"text": "hi"}),
                ("lines", "t-lines", {}),
                ("pieces", "t-pieces", {}),
                ("fail", "t-fail", {"message": "the disk is full"}),
            )
        )
        assert results.by_id("add").value == {"result": 5}  # structuredContent as sent
        assert results.by_id("shout").value == "HI"  # text content
        assert results.by_id("lines").value == "one\ntwo\nthree"
        assert results.by_id("pieces").value == [
            {"type": "text", "text": "first"},
            {"type": "text", "text": "second"},
            {"type": "image", "data": "cG5n", "mimeType": "image/png"},
        ]
        failed = results.by_id("fail")
        assert failed.status is Status.ERROR
        assert failed.error is not None
        assert failed.error.type == "ServerToolError"
        assert "the disk is full" in failed.error.message

        # Eight calls must be in flight together over the one pipe for the server to answer any of
        # them: the protocol multiplexes them, and corral holds no lock per server.
        batch = [ToolCall(f"m{i}", "t-meet", {"key": "stdio", "n": 8}) for i in range(8)]
        meetings = await reg.execute(batch)
        assert [r.value["arrived"] for r in meetings] == [8] * 8, meetings
        conn = connection_of(reg, "t-add")
        assert conn.statistics().sessions_opened == 1
        assert len(server_processes()) == 1
    finally:
        await reg.aclose()
    stats = conn.statistics()
    assert (stats.state, stats.sessions_live, stats.in_flight) == ("closed", 0, 0)
    assert server_processes() == []  # reaped by aclose itself, not later
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    await conn.aclose()  # idempotent
    with pytest.raises(ClosedError, match="closed"):
        await conn.call_tool("add", {"a": 1, "b": 1}, retry_safe=True)


def check_listing(reg: corral.ToolRegistry, by_name: dict[str, corral.Tool]) -> None:
    """The tools as the test server lists them, and how their annotations drive scheduling."""
    assert set(by_name) == READ_ONLY | {
        "shout",
        "fail",
        "meet_plain",
        "record",
        "record_idempotent",
    }
    add = by_name["add"]
    assert add.description == "Add two integers."
    assert add.parameters["required"] == ["a", "b"]
    assert add.parameters["properties"]["a"]["type"] == "integer"
    assert (add.source, add.mode, add.is_async, add.process_capable) == (
        "mcp",
        "async",
        True,
        False,
    )
    openai = {s["function"]["name"]: s["function"] for s in reg.schemas("openai")}
    assert openai[add.name]["parameters"] == add.parameters

    # readOnlyHint -> read-only; no hints -> the registry's rule for undeclared tools.
    assert {n for n, t in by_name.items() if t.read_only} == READ_ONLY
    shout = by_name["shout"]
    assert not shout.declared
    assert shout.claims_fn is None
    exclusive = (Claim(EXCLUSIVE_RESOURCE, write=True),)
    assert shout.claims({"text": "x"}, "/", independent=False) == exclusive
    plan = reg.plan(
        calls(
            ("s1", shout.name, {"text": "a"}),
            ("s2", shout.name, {"text": "b"}),
            ("a1", add.name, {"a": 1, "b": 2}),
            ("a2", add.name, {"a": 3, "b": 4}),
        )
    )
    assert [e.before for e in plan.waits_for(1)] == [0]  # undeclared: one at a time
    assert plan.waits_for(2) == ()
    assert plan.waits_for(3) == ()
    # idempotentHint (or read-only) is what makes a dropped call safe to retry.
    retry_safe = {n for n, t in by_name.items() if isinstance(t.fn, RemoteCall) and t.fn.retry_safe}
    assert retry_safe == READ_ONLY | {"record_idempotent"}


def test_results_map_structured_text_blocks_and_errors() -> None:
    def result(*blocks: Any, structured: Any = None, error: bool = False) -> CallToolResult:
        return CallToolResult(content=list(blocks), structured_content=structured, is_error=error)

    text = TextContent(type="text", text="a")
    image = ImageContent(type="image", data="eA==", mime_type="image/png")
    assert result_value(result(text, structured={"x": 1})) == {"x": 1}
    assert result_value(result(text, structured=[1, 2])) == [1, 2]
    assert result_value(result(text, TextContent(type="text", text="b"))) == "a\nb"
    assert result_value(result(text, image))[1]["mimeType"] == "image/png"
    assert result_value(result()) is None
    with pytest.raises(ServerToolError, match="^a$"):
        result_value(result(text, error=True))
    with pytest.raises(ServerToolError, match="no text"):
        result_value(result(error=True))


async def test_names_are_namespaced_made_safe_and_collisions_refused() -> None:
    connection = MCPConnection(parse_target("http://127.0.0.1:1/mcp", None))
    schema = {"type": "object", "properties": {}}

    def local(name: str, namespace: str | None = None, **hints: Any) -> corral.Tool:
        annotations = ToolAnnotations(**hints) if hints else None
        mcp_tool = MCPTool(name=name, input_schema=schema, annotations=annotations)
        return tool_from_mcp(connection, mcp_tool, namespace=namespace)

    assert local("files.read/v2", "fs").name == "fs-files_read_v2"
    long = local("x" * 80)
    assert len(long.name) == 64
    assert long.name != local("x" * 81).name
    assert local("t", read_only_hint=True).read_only
    idempotent = local("t", idempotent_hint=True)
    assert not idempotent.read_only
    assert isinstance(idempotent.fn, RemoteCall)
    assert idempotent.fn.retry_safe
    assert connection.statistics().sessions_opened == 0  # building tools opens nothing


# -- concurrency: many calls in flight over one session ----------------------------------------


async def test_bad_arguments_never_reach_the_server(tmp_path: Path) -> None:
    record = tmp_path / "record"
    async with http_server(record) as url, corral.ToolRegistry() as reg:
        await reg.register_mcp(url)
        bad = await reg.execute(calls(("no-tag", "record", {}), ("int-tag", "record", {"tag": 5})))
        assert [r.error.type for r in bad if r.error] == ["ToolArgumentsInvalid"] * 2
        assert "'tag' is a required property" in str(bad.by_id("no-tag").error)
        assert "tag: 5 is not of type 'string'" in str(bad.by_id("int-tag").error)
        assert recorded(record) == []
        good = await reg.execute(calls(("ok", "record", {"tag": "ok"})))
        assert good.by_id("ok").value == {"result": 1}
        assert recorded(record) == ["ok"]


async def test_streamable_http_calls_overlap_without_a_lock_per_server(tmp_path: Path) -> None:
    async with http_server() as url, corral.ToolRegistry(assume="independent") as reg:
        await reg.register_mcp(url)
        # meet_plain has no hints: with assume="independent" the scheduler lets it run at once,
        # and the connection must not serialise it either.
        batch = [ToolCall(f"p{i}", "meet_plain", {"key": "plain", "n": 6}) for i in range(6)]
        batch += [ToolCall(f"r{i}", "meet", {"key": "ro", "n": 6}) for i in range(6)]
        results = await reg.execute(batch)
        assert results.ok, results
        assert max(r.value["peak"] for r in results) >= 6
        assert connection_of(reg).statistics().sessions_opened == 1


async def test_never_answering_call_is_cancelled_cleanly_and_others_go_on() -> None:
    async with http_server() as url, corral.ToolRegistry() as reg:
        await reg.register_mcp(url)
        batch = calls(("hang", "hang", {}), timeout=0.3)
        batch += calls(("m1", "meet", {"key": "k", "n": 2}), ("m2", "meet", {"key": "k", "n": 2}))
        results = await reg.execute(batch)
        hang = results.by_id("hang")
        assert hang.status is Status.TIMEOUT
        assert hang.duration_s is not None
        assert hang.duration_s < 2
        assert results.by_id("m1").ok
        assert results.by_id("m2").ok
        follow_up = await reg.execute(calls(("a", "add", {"a": 1, "b": 1})))
        assert follow_up.by_id("a").value == {"result": 2}
        stats = connection_of(reg).statistics()
        assert (stats.sessions_opened, stats.in_flight) == (1, 0)


async def test_sse_endpoint_lists_and_calls_concurrently() -> None:
    async with http_server(sse_path="/sse") as url, corral.ToolRegistry() as reg:
        tools = await reg.register_mcp(url, namespace="sse")
        assert {t.name for t in tools if t.read_only} == {f"sse-{n}" for n in READ_ONLY}
        batch = [ToolCall(f"m{i}", "sse-meet", {"key": "sse", "n": 4}) for i in range(4)]
        batch += calls(("add", "sse-add", {"a": 1, "b": 2}))
        results = await reg.execute(batch)
        assert results.ok, results
        assert results.by_id("add").value == {"result": 3}
        assert connection_of(reg, "sse-add").transport == "sse"


async def test_url_that_is_not_streamable_http_falls_back_to_sse() -> None:
    async with http_server(sse_path="/events") as url, corral.ToolRegistry() as reg:
        await reg.register_mcp(url)
        assert connection_of(reg).transport == "sse"
        results = await reg.execute(calls(("a", "add", {"a": 2, "b": 2})))
        assert results.by_id("a").value == {"result": 4}


async def test_headers_reach_the_server() -> None:
    def require_token(app: Any) -> Any:
        async def guarded(scope: Any, receive: Any, send: Any) -> None:
            headers = dict(scope.get("headers") or [])
            if scope["type"] == "http" and headers.get(b"authorization") != b"Bearer s3cret":
                await PlainTextResponse("no", status_code=401)(scope, receive, send)
                return
            await app(scope, receive, send)

        return guarded

    async with http_server(wrap=require_token) as url, corral.ToolRegistry() as reg:
        with pytest.raises(RemoteConnectError, match=url):
            await reg.register_mcp(url)
        assert len(reg) == 0
        await reg.register_mcp(url, headers={"Authorization": "Bearer s3cret"})
        results = await reg.execute(calls(("a", "add", {"a": 1, "b": 2})))
        assert results.by_id("a").value == {"result": 3}


async def test_thread_mode_calls_are_sent_over_the_sessions_loop() -> None:
    async with http_server() as url, corral.ToolRegistry() as reg:
        await reg.register_mcp(url)
        results = await reg.execute(calls(("a", "add", {"a": 5, "b": 5})), mode="thread")
        assert results.by_id("a").value == {"result": 10}


# -- drops and restarts: reconnect, and the retry rule ----------------------------------------


async def test_stdio_server_death_retries_only_safe_calls_and_next_call_reconnects(
    tmp_path: Path,
) -> None:
    record = tmp_path / "record"
    async with corral.ToolRegistry(assume="independent") as reg:
        await reg.register_mcp(stdio_command(record))
        in_flight = asyncio.create_task(
            reg.execute(
                calls(
                    ("once", "record", {"tag": "once", "then": "hang"}),
                    ("twice", "record_idempotent", {"tag": "twice", "first": "hang"}),
                ),
                timeout=20,
            )
        )
        await eventually(lambda: sorted(recorded(record)) == ["once", "twice"], timeout_s=10)
        # Both are in flight on the server now; kill it with a third call.
        crashed = await reg.execute(calls(("crash", "record", {"tag": "crash", "then": "crash"})))
        results = await in_flight

        for call_id in ("crash", "once"):  # not idempotent: never retried
            result = (crashed if call_id == "crash" else results).by_id(call_id)
            assert error_of(result) == "OutcomeUnknown", result
            assert "may or may not have run" in str(result.error)
        assert results.by_id("twice").value == {"result": 2}  # idempotent: retried once
        assert sorted(recorded(record)) == ["crash", "once", "twice", "twice"]

        after = await reg.execute(calls(("next", "record", {"tag": "next"})))
        assert after.by_id("next").value == {"result": 1}  # a new session, transparently
        assert recorded(record).count("once") == 1
        assert connection_of(reg).statistics().sessions_opened == 2


async def test_http_server_restart_reconnects_and_never_reruns_a_non_idempotent_call(
    tmp_path: Path,
) -> None:
    record, port = tmp_path / "record", free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with corral.ToolRegistry(assume="independent") as reg:
        async with server_process(port, record) as server:
            # A wide window: the retry must outlast the restart below.
            await register_mcp(reg, url, reconnect_window_s=30)
            in_flight = asyncio.create_task(
                reg.execute(
                    calls(
                        ("once", "record", {"tag": "once", "then": "hang"}),
                        ("twice", "record_idempotent", {"tag": "twice", "first": "hang"}),
                    ),
                    timeout=40,
                )
            )
            await eventually(lambda: sorted(recorded(record)) == ["once", "twice"], timeout_s=10)
            server.kill()
        async with http_server(record, port=port):  # the same port, in this process now
            results = await in_flight
            once, twice = results.by_id("once"), results.by_id("twice")
            assert error_of(once) == "OutcomeUnknown", once
            assert twice.value == {"result": 2}, twice
            after = await reg.execute(calls(("next", "record", {"tag": "next"})))
            assert after.by_id("next").value == {"result": 1}
        assert sorted(recorded(record)) == ["next", "once", "twice", "twice"]
        assert connection_of(reg).statistics().sessions_opened >= 2


async def test_stateful_http_session_lost_in_a_restart_is_reopened_and_the_call_runs_once(
    tmp_path: Path,
) -> None:
    record, port = tmp_path / "record", free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with corral.ToolRegistry() as reg:
        async with server_process(port, record) as server:
            # The initialize handshake: a stateful session, named by an Mcp-Session-Id.
            await register_mcp(reg, url, handshake="legacy", reconnect_window_s=30)
            first = await reg.execute(calls(("a", "record", {"tag": "first"})))
            assert first.by_id("a").value == {"result": 1}
            server.kill()
        async with http_server(record, port=port):
            # The new server does not know the session and refuses the call unrun (404); it is
            # sent again on a new session, though the tool is not idempotent.
            second = await reg.execute(calls(("b", "record", {"tag": "second"})))
            assert second.by_id("b").value == {"result": 1}, second
            assert connection_of(reg).statistics().sessions_opened == 2
            await reg.aclose()  # before the server stops: the session's GET stream would hold it
        assert recorded(record) == ["first", "second"]


async def test_sse_stream_end_is_noticed_and_next_call_reconnects(tmp_path: Path) -> None:
    record, port = tmp_path / "record", free_port()
    async with corral.ToolRegistry() as reg:
        async with server_process(port, record, transport="sse") as server:
            await register_mcp(reg, f"http://127.0.0.1:{port}/sse", reconnect_window_s=30)
            first = await reg.execute(calls(("a", "record", {"tag": "first"})))
            assert first.by_id("a").value == {"result": 1}
            server.kill()
            # The SSE stream's end retires the session before anyone calls.
            await eventually(lambda: connection_of(reg).statistics().sessions_live == 0)
        async with http_server(record, sse_path="/sse", port=port):
            second = await reg.execute(calls(("b", "record", {"tag": "second"})))
            assert second.by_id("b").value == {"result": 1}
            # Close the session before the server stops: its open SSE stream would hold up the
            # server's graceful shutdown.
            await reg.aclose()
        assert recorded(record) == ["first", "second"]
        assert connection_of(reg).statistics().sessions_opened == 2


# -- failures to connect, bad targets, closing -------------------------------------------------


async def test_connection_failures_name_the_target(registry: corral.ToolRegistry) -> None:
    refused = f"http://127.0.0.1:{free_port()}/mcp"
    with pytest.raises(RemoteConnectError, match=refused):
        await registry.register_mcp(refused)
    with pytest.raises(RemoteConnectError, match="no-such-mcp-server"):
        await registry.register_mcp("no-such-mcp-server --flag")
    with pytest.raises(RemoteConnectError, match="cannot connect"):
        await registry.register_mcp([sys.executable, "-c", "pass"])  # exits at once
    assert len(registry) == 0


async def test_a_server_that_never_answers_the_handshake_is_bounded(
    registry: corral.ToolRegistry,
) -> None:
    silent = [sys.executable, "-c", "import sys; sys.stdin.read()"]  # reads, never answers
    with pytest.raises(RemoteConnectError, match=r"no answer to the handshake within 0\.5 s"):
        await register_mcp(registry, silent, connect_timeout_s=0.5)
    assert server_processes() == []


async def test_bad_targets_are_usage_errors(registry: corral.ToolRegistry) -> None:
    with pytest.raises(UsageError, match="empty"):
        await registry.register_mcp("   ")
    with pytest.raises(UsageError, match="headers apply"):
        await registry.register_mcp("server --stdio", headers={"X": "1"})
    with pytest.raises(UsageError, match="no host"):
        await registry.register_mcp("http:///mcp")
    with pytest.raises(UsageError, match="not valid"):
        await registry.register_mcp("server", namespace="a b")


async def test_registering_a_server_twice_is_refused_and_closes_the_second_session() -> None:
    async with http_server() as url, corral.ToolRegistry() as reg:
        await reg.register_mcp(url)
        with pytest.raises(UsageError, match="already registered.*pass a namespace"):
            await reg.register_mcp(url)
        assert len(reg) == len(READ_ONLY) + 5
        await reg.register_mcp(url, namespace="two")
        results = await reg.execute(calls(("a", "two-add", {"a": 1, "b": 1})))
        assert results.by_id("a").value == {"result": 2}


async def test_validation_names_every_bad_argument() -> None:
    connection = MCPConnection(parse_target("http://127.0.0.1:1/mcp", None))
    schema = {
        "type": "object",
        "properties": {"path": {"type": "string"}, "depth": {"type": "integer", "minimum": 0}},
        "required": ["path"],
        "additionalProperties": False,
    }
    tool = tool_from_mcp(connection, MCPTool(name="walk", input_schema=schema))
    assert tool.validate({"path": "/tmp", "depth": 2}) == {"path": "/tmp", "depth": 2}
    with pytest.raises(ToolArgumentsInvalid) as info:
        tool.validate({"depth": -1, "colour": "red"})
    message = str(info.value)
    assert "'walk'" in message
    assert "'path' is a required property" in message
    assert "depth: -1 is less than the minimum of 0" in message
    assert "'colour' was unexpected" in message
