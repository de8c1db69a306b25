"""The remote workloads of `corral bench tools`: real calculator servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
from pathlib import Path

import httpx
import psutil
import pytest
from rich.console import Console
from typer.testing import CliRunner

import corral
from corral.cli import app
from corral.cli.bench import (
    BenchError,
    BenchOptions,
    Samples,
    WorkloadResult,
    run_tools_bench,
    select_workloads,
)
from corral.cli.bench._report import server_ceiling, server_floor_ms
from corral.cli.bench._servers import Server, open_servers

REMOTE = select_workloads("remote")


def _call(name: str, **arguments: float) -> dict[str, object]:
    function = {"name": name, "arguments": json.dumps(arguments)}
    return {"id": f"c_{name}", "type": "function", "function": function}


def _children() -> list[psutil.Process]:
    return [
        c
        for c in psutil.Process().children(recursive=True)
        if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
    ]


@pytest.mark.slow
def test_remote_workloads_run_end_to_end_and_stop_their_servers(tmp_path: Path) -> None:
    out = io.StringIO()
    json_path = tmp_path / "bench.json"
    options = BenchOptions(
        rounds=2, warmup=0, peer=False, json_path=json_path, bench_dir=tmp_path, workloads=REMOTE
    )

    report = run_tools_bench(options, console=Console(file=out, width=220))

    assert _children() == []  # both servers were stopped before run_tools_bench returned
    assert [r.workload.key for r in report.results] == ["openapi", "mcp-sse", "mcp-http"]
    for result in report.results:
        assert len(result.corral.seconds) == 2
        assert result.corral.median_ms > 0
        assert len(result.corral.server_cpu_s) == 2  # the server's CPU time, per batch
        assert result.peers == ()
        assert result.passed is None
    printed = out.getvalue()
    assert "calculator, MCP streamable HTTP" in printed
    assert "server CPU" in printed
    data = json.loads(json_path.read_text())
    assert [w["source"] for w in data["workloads"]] == ["openapi", "mcp-sse", "mcp-http"]
    assert data["workloads"][0]["corral"]["server_cpu_median_ms"] >= 0
    assert (tmp_path / "logs" / "calculator-openapi.log").exists()
    assert (tmp_path / "logs" / "calculator-mcp.log").exists()


async def test_the_mcp_server_serves_read_only_tools_and_stops_gracefully(
    tmp_path: Path,
) -> None:
    async with open_servers(select_workloads("mcp"), tmp_path, max_seconds=60) as servers:
        assert list(servers) == ["mcp"]
        mcp = servers["mcp"]
        async with corral.ToolRegistry() as reg:
            await reg.register_mcp(mcp.url("mcp-http"), namespace="h")
            await reg.register_mcp(mcp.url("mcp-sse"), namespace="s")  # the same process
            assert all(tool.read_only for tool in reg)  # readOnlyHint, as MCP declares it
            results = await reg.execute(
                [_call("h-divide", a=7, b=2), _call("s-multiply", a=3, b=4)]
            )
        assert [r.value for r in results] == [{"result": 3.5}, {"result": 12.0}]
        assert (await mcp.stats()).calls == 2
    # Closing its stdin is enough: it exits by itself, with status 0, not killed.
    assert mcp.process.returncode == 0


async def test_cancelling_the_run_stops_the_servers(tmp_path: Path) -> None:
    started = asyncio.Event()
    running: list[Server] = []

    async def run() -> None:
        async with open_servers(select_workloads("openapi"), tmp_path, max_seconds=60) as servers:
            running.extend(servers.values())
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(run())
    async with asyncio.timeout(30):
        await started.wait()
    [openapi] = running
    async with httpx.AsyncClient() as client:
        spec = (await client.get(openapi.url("openapi"))).json()
        answer = await client.get(f"{openapi.base_url}/divide", params={"a": 7, "b": 2})
    assert sorted(spec["paths"]) == ["/add", "/divide", "/multiply", "/subtract"]
    assert all(list(ops) == ["get"] for ops in spec["paths"].values())  # read-only by method
    assert answer.json() == 3.5
    task.cancel()  # what Ctrl-C or the run's time limit does
    with pytest.raises(asyncio.CancelledError):
        await task
    assert openapi.process.returncode is not None


def test_missing_server_packages_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str) -> object:
        return None if name == "fastapi" else real(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(BenchError, match=r"need fastapi .*--workload local"):
        run_tools_bench(BenchOptions(peer=False, workloads=select_workloads("openapi,mcp")))


def test_select_workloads_by_key_and_group() -> None:
    assert [w.key for w in select_workloads("mcp-sse, openapi")] == ["openapi", "mcp-sse"]
    assert [w.key for w in select_workloads("mcp")] == ["mcp-sse", "mcp-http"]
    assert len(select_workloads("local,remote")) == len(select_workloads("all"))
    with pytest.raises(corral.UsageError, match="workload 'nope' is not known"):
        select_workloads("openapi,nope")
    with pytest.raises(corral.UsageError, match="no workload selected"):
        select_workloads(" , ")


def test_cli_rejects_an_unknown_workload() -> None:
    result = CliRunner().invoke(app, ["bench", "tools", "--no-peer", "--workload", "nope"])
    assert result.exit_code == 2
    assert "is not known" in result.output


def test_the_server_floor_bounds_the_ratio() -> None:
    workload = next(w for w in REMOTE if w.key == "mcp-http")
    result = WorkloadResult(
        workload,
        corral=Samples("corral", (0.30, 0.30), server_cpu_s=(0.25, 0.25)),
        peers=(
            Samples("async", (0.60, 0.60), server_cpu_s=(0.40, 0.40)),
            Samples("sync", (0.90, 0.90), server_cpu_s=(0.20, 0.20)),
        ),
    )
    assert server_floor_ms(result) == pytest.approx(200)
    assert server_ceiling(result) == pytest.approx(600 / 200)  # TR's best median / the floor
    assert server_ceiling(WorkloadResult(workload, corral=result.corral)) is None
