"""`corral mcp serve` and `corral.mcp_server`: a registry's tools served over MCP, end to end.

The client is corral's own `register_mcp`, so each test is a round trip: corral client, SDK
transport, SDK server, `ToolRegistry.execute` on the far side.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client
from mcp_types import CallToolResult, TextContent
from typer.testing import CliRunner

import corral
from corral import Status, ToolCall
from corral.cli import app
from corral.cli.mcp import ServeError, load_registry
from corral.mcp_server import build_app, build_server, serve_registry
from tests.mcp_servers import corral_registry, wait_listening
from tests.servers import free_port, running_asgi

ROOT = Path(__file__).resolve().parents[2]
CORRAL = Path(sys.executable).parent / "corral"
SERVED = "tests.mcp_servers:corral_registry"


def serve_command(*options: str) -> list[str]:
    return [str(CORRAL), "mcp", "serve", "--tools", SERVED, "--app-dir", str(ROOT), *options]


async def check_round_trip(reg: corral.ToolRegistry) -> None:
    """The served registry's tools, as seen and called through MCP."""
    tools = {t.name: t for t in reg}
    assert set(tools) == {"add", "greet", "boom", "meet", "hang"}
    assert {name for name, t in tools.items() if t.read_only} == {"add", "meet", "hang"}
    assert tools["add"].parameters["required"] == ["a", "b"]
    assert tools["greet"].description == "Greet someone."

    batch = [
        ToolCall("add", "add", {"a": 2, "b": 3}),
        ToolCall("greet", "greet", {"name": "ada"}),
        ToolCall("boom", "boom", {"message": "the disk is full"}),
        ToolCall("hang", "hang", {}),
    ]
    # Four calls that only finish together: the server runs tools/calls at once.
    batch += [ToolCall(f"m{i}", "meet", {"key": "served", "n": 4}) for i in range(4)]
    results = await reg.execute(batch)
    assert results.by_id("add").value == 5  # structuredContent: any JSON value on 2026-07-28
    assert results.by_id("greet").value == {"greeting": "hello ada"}
    boom = results.by_id("boom")
    assert boom.status is Status.ERROR
    assert str(boom.error) == "ServerToolError: error: ValueError: the disk is full"
    hang = results.by_id("hang")  # the served registry's own timeout, reported as isError
    assert "timed out after 0.2 s" in str(hang.error)
    assert [r.value["arrived"] for r in results if r.id.startswith("m")] == [4] * 4
    # Bad arguments: the client checks them against the served schema before sending.
    bad = await reg.execute([ToolCall("bad", "add", {"a": "two"})])
    assert "ToolArgumentsInvalid" in str(bad.by_id("bad").error)


async def test_cli_serves_over_stdio(registry: corral.ToolRegistry) -> None:
    await registry.register_mcp(serve_command())
    await check_round_trip(registry)


async def test_cli_serves_over_streamable_http() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *serve_command("--transport", "http", "--port", str(port)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        await wait_listening(port, proc)
        async with corral.ToolRegistry() as reg:
            await reg.register_mcp(f"http://127.0.0.1:{port}/mcp")
            await check_round_trip(reg)
        proc.send_signal(signal.SIGTERM)  # a graceful shutdown, then the registry closes
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_build_app_serves_in_process_and_reads_the_registry_live() -> None:
    served = corral_registry()
    try:
        async with running_asgi(build_app(served)) as base, corral.ToolRegistry() as reg:
            await reg.register_mcp(f"{base}/mcp", namespace="remote")
            assert len(reg) == 5
            results = await reg.execute([ToolCall("a", "remote-add", {"a": 1, "b": 2})])
            assert results.by_id("a").value == 3

            @served.tool
            def late(x: int) -> int:
                """Registered after the server started."""
                return x * 2

            # tools/list reads the registry on each request: a second client sees `late`.
            await reg.register_mcp(f"{base}/mcp", namespace="again")
            late_result = await reg.execute([ToolCall("l", "again-late", {"x": 21})])
            assert late_result.by_id("l").value == 42
            unknown = await reg.execute([ToolCall("u", "remote-late", {"x": 1})])
            assert "remote-late" in str(unknown.by_id("u").error)  # not listed to that client
    finally:
        await served.aclose()


async def test_build_server_lists_schemas_hints_and_answers_errors_as_is_error() -> None:
    reg = corral.ToolRegistry()

    @reg.tool(read_only=True)
    def look(where: str) -> str:
        """Look somewhere."""
        return f"seen {where}"

    @reg.tool
    def touch() -> None:
        """Touch."""

    async with Client(build_server(reg, name="demo")) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert listed["look"].input_schema == reg.get("look").parameters
        assert listed["look"].description == "Look somewhere."
        assert listed["look"].annotations is not None
        assert listed["look"].annotations.read_only_hint is True
        assert listed["touch"].annotations is None

        seen = await client.call_tool("look", {"where": "here"})
        assert (seen.is_error, text_of(seen)) == (False, "seen here")
        assert seen.structured_content is None  # a string is its own text
        unknown = await client.call_tool("nope", {})
        assert unknown.is_error
        assert "ToolNotFound: tool 'nope' is not registered" in text_of(unknown)
        bad = await client.call_tool("look", {"where": 3})
        assert bad.is_error
        assert "ToolArgumentsInvalid" in text_of(bad)
        await reg.aclose()
        closed = await client.call_tool("look", {"where": "here"})
        assert closed.is_error
        assert "ClosedError" in text_of(closed)


def text_of(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


async def test_serve_registry_rejects_an_unknown_transport() -> None:
    with pytest.raises(corral.UsageError, match="'carrier-pigeon'"):
        await serve_registry(corral.ToolRegistry(), transport="carrier-pigeon")  # type: ignore[arg-type]


# -- what --tools may name ---------------------------------------------------------------------

REGISTRY = corral.ToolRegistry()


@REGISTRY.tool
def registered(x: int) -> int:
    """Already in REGISTRY."""
    return x


def make_registry() -> corral.ToolRegistry:
    reg = corral.ToolRegistry()
    reg.register(double)
    return reg


async def make_registry_async() -> corral.ToolRegistry:
    return make_registry()


def double(x: int) -> int:
    """Double x."""
    return 2 * x


def triple(x: int) -> int:
    """Triple x."""
    return 3 * x


@pytest.mark.parametrize(
    ("refs", "names"),
    [
        (["tests.cli.test_mcp_serve:REGISTRY"], {"registered"}),
        (["tests.cli.test_mcp_serve:make_registry"], {"double"}),
        (["tests.cli.test_mcp_serve:make_registry_async"], {"double"}),
        (
            ["tests.cli.test_mcp_serve:double", "tests.cli.test_mcp_serve:triple"],
            {"double", "triple"},
        ),
        (
            ["tests.cli.test_mcp_serve:make_registry", "tests.cli.test_mcp_serve:triple"],
            {"double", "triple"},
        ),
    ],
)
async def test_tools_option_accepts_registries_factories_and_functions(
    refs: list[str], names: set[str]
) -> None:
    reg = await load_registry(refs)
    try:
        assert {t.name for t in reg} == names
    finally:
        if reg is not REGISTRY:
            await reg.aclose()


@pytest.mark.parametrize(
    ("refs", "message"),
    [
        ([], "at least one"),
        (["tests.cli.test_mcp_serve"], "package.module:attribute"),
        (["no_such_module_xyz:thing"], "cannot import 'no_such_module_xyz'"),
        (["tests.cli.test_mcp_serve:missing"], "no attribute 'missing'"),
        (["tests.cli.test_mcp_serve:ROOT"], "PosixPath"),
        (
            ["tests.cli.test_mcp_serve:REGISTRY", "tests.cli.test_mcp_serve:make_registry"],
            "2 registries",
        ),
    ],
)
async def test_tools_option_errors_name_the_reference(refs: list[str], message: str) -> None:
    with pytest.raises(ServeError, match=message):
        await load_registry(refs)


def test_cli_reports_a_bad_reference_and_exits_1() -> None:
    result = CliRunner().invoke(app, ["mcp", "serve", "--tools", "no_such_module_xyz:thing"])
    assert result.exit_code == 1
    assert "cannot import 'no_such_module_xyz'" in result.output
