"""`corral bench server`, small: real processes, real sockets, every figure reported."""

from __future__ import annotations

import asyncio
import io
import shutil
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from rich.console import Console

from corral.cli.bench_server import _model
from corral.cli.bench_server._model import make_app
from corral.cli.bench_server._run import ServerBenchOptions, measure, report


async def test_the_bench_runs_small_and_reports_every_figure() -> None:
    out = io.StringIO()
    console = Console(file=out, width=160)
    options = ServerBenchOptions(concurrency=(1, 3), seconds=1.0, warmup_s=0.3, streams=30)
    figures = await measure(options, console)
    report(figures, console)
    assert [level.clients for level in figures.levels] == [1, 3]
    for level in figures.levels:
        assert level.errors == 0, level.error_samples
        assert level.runs > 0
        # One run waits for two model calls and a tool call: it cannot beat that.
        assert level.run_ms[0] >= figures.unavoidable_ms
        assert 0 < level.ttfe_ms[0] <= level.run_ms[0]
        assert level.server_cpu_ms_per_run > 0
    streams = figures.streams
    assert streams is not None
    # 30 streams open; the server's default cap of 20 provider streams holds the other 10 back.
    assert (streams.open_at_once, streams.held_at_model, streams.queued_in_manager) == (30, 20, 10)
    assert (streams.finished_ok, streams.errors) == (30, 0)
    text = out.getvalue()
    for figure in ("runs/s", "server CPU ms/run", "SSE streams open at once", "p99 first event"):
        assert figure in text


async def test_the_fake_model_calls_both_tools_then_quotes_their_results() -> None:
    async with TestClient(TestServer(make_app(first_chunk_s=0, chunk_s=0))) as client:
        ask = {"role": "user", "content": "r1: add 2 3, multiply -4 5"}
        first = await client.post("/v1/chat/completions", json={"messages": [ask]})
        text = await first.text()
        assert '"name":"add","arguments":"{\\"a\\": 2, \\"b\\": 3}"' in text
        assert '"name":"multiply","arguments":"{\\"a\\": -4, \\"b\\": 5}"' in text
        assert '"finish_reason":"tool_calls"' in text
        assert text.endswith("data: [DONE]\n\n")
        results = [
            {"role": "tool", "tool_call_id": "a", "content": "5"},
            {"role": "tool", "tool_call_id": "b", "content": "-20"},
        ]
        second = await client.post(
            "/v1/chat/completions",
            json={"messages": [ask, {"role": "assistant", "content": None}, *results]},
        )
        pieces = [
            line.split('"content":"')[1].split('"')[0]
            for line in (await second.text()).splitlines()
            if '"content":"' in line
        ]
        assert "".join(pieces) == "add=5 multiply=-20"
        assert (await (await client.get("/stats")).json())["requests"] == 2


def test_the_report_shows_loaded_levels_beside_the_verdict() -> None:
    from corral.cli.bench_server._run import Instructions, LevelFigures, ServerBenchFigures

    def level(clients: int, cpu_ms: float) -> LevelFigures:
        return LevelFigures(clients, 100, 10.0, (2.0, 9.0), (150.0, 170.0), 0, (), cpu_ms, 1.0, 1.0)

    figures = ServerBenchFigures((level(1, 7.0), level(10, 3.5), level(200, 3.2)), None, 140, "db")
    out = io.StringIO()
    ok = report(figures, Console(file=out, width=160))
    text = out.getvalue()
    assert not ok  # the worst level (1 client, 7 ms) decides the verdict
    assert "7.00 ms <= 5 ms" in text
    assert "10 clients or more (worst)" in text
    assert "3.50 ms" in text
    counted = ServerBenchFigures(
        figures.levels, None, 140, "db", instructions=Instructions(server=9.6e6, model=2.4e6)
    )
    out = io.StringIO()
    report(counted, Console(file=out, width=200))
    assert "server instructions per run (callgrind, 1 client)" in out.getvalue()
    assert "9.60 M" in out.getvalue()
    assert "2.40 M (server: 4.00x)" in out.getvalue()


def test_callgrind_totals_are_read_and_a_file_without_them_is_refused() -> None:
    from corral.cli.bench_server._run import callgrind_total

    assert callgrind_total("events: Ir\nsummary: 98452368\n") == 98452368
    assert callgrind_total("positions: line\nevents: Ir\ntotals: 1234\n") == 1234
    with pytest.raises(ValueError, match="no 'totals:' line"):
        callgrind_total("events: Ir\n")


def test_counting_instructions_without_valgrind_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from corral.cli.bench_server._run import Callgrind, ServerBenchError

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ServerBenchError, match="needs valgrind and callgrind_control"):
        Callgrind.tools()


@pytest.mark.skipif(
    shutil.which("valgrind") is None or shutil.which("callgrind_control") is None,
    reason="valgrind (callgrind) is not installed",
)
async def test_callgrind_counts_the_instructions_of_the_work_between_its_marks(
    tmp_path: Path,
) -> None:
    from corral.cli.bench_server._run import Callgrind, _free_port

    port = _free_port()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    async with (
        aiohttp.ClientSession() as http,
        Callgrind.run("http server", argv, tmp_path) as counted,
    ):
        url = f"http://127.0.0.1:{port}/"
        async with asyncio.timeout(120):
            while True:
                try:
                    async with http.get(url) as response:
                        await response.read()
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)

        async def requests(n: int) -> int:
            await counted.zero()
            for _ in range(n):
                async with http.get(url) as response:
                    await response.read()
            return await counted.dump()

        few, more = await requests(2), await requests(8)
    assert 0 < few < more  # the counts follow the work done between the marks
    assert more > 2.5 * few


async def test_the_floor_relays_a_run_with_the_events_corral_sends() -> None:
    import httpx

    from corral.cli.bench_server._floor import FloorApp

    async with TestServer(make_app(first_chunk_s=0, chunk_s=0)) as model:
        app = FloorApp(str(model.make_url("")))
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://floor") as http:
                assert (await http.get("/readyz")).status_code == 200
                created = await http.post("/sessions", json={"agent": "calc"})
                assert created.status_code == 201
                url = f"/sessions/{created.json()['id']}/messages"
                answer = await http.post(url, json={"message": "r1: add 2 3, multiply -4 5"})
                assert (await http.get("/nowhere")).status_code == 404
        finally:
            await app.aclose()
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/event-stream"
    kinds = [line[7:] for line in answer.text.splitlines() if line.startswith("event: ")]
    assert kinds[:1] == ["started"]
    assert kinds[-2:] == ["step_finished", "done"]
    assert kinds.count("tool_call_started") == kinds.count("tool_call_finished") == 2
    assert kinds.count("text") >= 2
    assert '"result":{"text":"add=5 multiply=-20"}' in answer.text


async def test_the_floor_is_measured_in_corral_s_place_with_no_target_but_its_answers() -> None:
    out = io.StringIO()
    console = Console(file=out, width=160)
    options = ServerBenchOptions(
        concurrency=(2,), seconds=0.6, warmup_s=0.2, streams=10, floor=True
    )
    figures = await measure(options, console)
    assert figures.floor
    assert figures.streams is None  # the held streams need corral's gauges
    (level,) = figures.levels
    assert level.errors == 0, level.error_samples
    assert level.runs > 0
    assert level.server_cpu_ms_per_run > 0
    assert report(figures, console)
    text = out.getvalue()
    assert "the floor: a bare relay in corral serve's place" in text
    assert "<= 5 ms" not in text


async def test_instructions_count_the_server_then_the_model_each_in_a_pass_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # callgrind itself is stood in for (the real one takes minutes): each pass's processes run
    # as they are, and the stand-in reports a fixed total for the process it would count (1000
    # for a server, 250 for a model), so the figures show which process each pass counted.
    import contextlib
    from collections.abc import AsyncIterator

    from corral.cli.bench_server import _run

    counted: list[list[str]] = []

    class Counter:
        def __init__(self, process: _run._Process, argv: list[str]) -> None:
            self.process = process
            self.argv = argv
            self.zeroed = False

        async def zero(self) -> None:
            self.zeroed = True

        async def dump(self) -> int:
            assert self.zeroed
            return 1000 if "serve" in self.argv else 250

    @contextlib.asynccontextmanager
    async def run(
        name: str, argv: list[str], root: Path, env: dict[str, str] | None = None
    ) -> AsyncIterator[Counter]:
        counted.append(argv)
        async with _run._process(name, argv, root / f"{len(counted)}.log", env) as process:
            yield Counter(process, argv)

    monkeypatch.setattr(_run.Callgrind, "run", run)
    monkeypatch.setattr(_run, "CALLGRIND_WARMUP_RUNS", 1)
    options = ServerBenchOptions(instruction_runs=2)
    env = {_run.API_KEY_ENV: "sk-bench", "CORRAL_LOG_LEVEL": "warning"}
    env["CORRAL_CREATE_DEV_KEY"] = "false"
    async with aiohttp.ClientSession() as http:
        figures = await _run._instructions(http, tmp_path, env, options)
    assert figures == _run.Instructions(server=500.0, model=125.0)
    assert len(counted) == 2
    assert "serve" in counted[0]  # first pass: the server under callgrind
    assert _model.__name__ in counted[1]  # second pass: the fake model
    # Each pass ran on a database of its own, away from the levels' one.
    assert (tmp_path / "callgrind-server-data" / "corral.db").exists()
    assert (tmp_path / "callgrind-model-data" / "corral.db").exists()


async def test_the_floor_takes_as_many_model_streams_at_once_as_corral_serve_does() -> None:
    import httpx

    from corral.cli.bench_server._floor import FloorApp
    from corral.server.settings import ServerSettings

    cap = ServerSettings.model_fields["max_concurrent_llm_streams"].default
    async with TestClient(TestServer(make_app(first_chunk_s=0, chunk_s=0))) as model:
        app = FloorApp(str(model.make_url("")))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://floor") as http:

                async def run(i: int) -> str:
                    url = "/sessions/s/messages"
                    answer = await http.post(
                        url, json={"message": f"hold {i}: add {i} 1, multiply 2 3"}
                    )
                    return answer.text

                async def held() -> int:
                    return int((await (await model.get("/stats")).json())["held"])

                async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
                    runs = [tg.create_task(run(i)) for i in range(cap + 5)]
                    while True:  # until the model holds `cap` calls (the timeout bounds it)
                        if await held() >= cap:
                            break
                        await asyncio.sleep(0.01)
                    await asyncio.sleep(0.1)  # the other 5 wait for a slot, not at the model
                    assert await held() == cap
                    await model.post("/release")
        finally:
            await app.aclose()
    for i, task in enumerate(runs):
        assert f'"text":"add={i + 1} multiply=6"' in task.result()
