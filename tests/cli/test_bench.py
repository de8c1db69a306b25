from __future__ import annotations

import io
import json
import os
import random
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import corral
from corral.cli import app
from corral.cli.bench import (
    BATCH_SIZE,
    WORKLOADS,
    BenchError,
    BenchOptions,
    Samples,
    Variant,
    WorkloadResult,
    make_calls,
    open_peer,
    run_tools_bench,
    select_workloads,
    summary_table,
)
from corral.cli.bench import _bench_tools as bt

LOCAL = select_workloads("local")


def _render(table: object) -> str:
    console = Console(file=io.StringIO(), width=200)
    console.print(table)
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


@pytest.mark.slow
def test_no_peer_run_measures_every_workload_and_prints_a_timeline(tmp_path: Path) -> None:
    out = io.StringIO()
    json_path = tmp_path / "bench.json"
    options = BenchOptions(rounds=2, warmup=0, peer=False, json_path=json_path, workloads=LOCAL)

    report = run_tools_bench(options, console=Console(file=out, width=200))

    assert [r.workload.key for r in report.results] == [w.key for w in LOCAL]
    for result in report.results:
        assert len(result.corral.seconds) == 2
        assert result.corral.median_ms > 0
        assert result.peers == ()
        assert result.ratio is None
        assert result.passed is None
    async_result = report.results[-1]
    assert async_result.reference is not None
    assert async_result.reference.median_ms >= bt.SLEEP_S * 1000
    printed = out.getvalue()
    assert "one mixed batch" in printed
    for call in ("w1", "r1", "s2", "x1"):
        assert f" {call} " in printed  # a timeline row per call of the demo batch
    assert "undeclared: one at a time" in printed
    assert "writes file:notes/todo.txt" in printed  # paths shown relative to the workdir
    data = json.loads(json_path.read_text())
    assert [w["workload"] for w in data["workloads"]] == [w.key for w in LOCAL]
    assert data["environment"]["rounds"] == 2


@pytest.mark.slow
def test_cli_no_peer_exits_cleanly() -> None:
    result = CliRunner().invoke(
        app,
        ["bench", "tools", "--no-peer", "--rounds", "1", "--warmup", "0", "--workload", "local"],
    )
    assert result.exit_code == 0, result.output
    assert "corral vs ToolRegistry" in result.output


def test_bad_rounds_is_a_usage_error() -> None:
    with pytest.raises(corral.UsageError, match="rounds must be >= 1"):
        run_tools_bench(BenchOptions(rounds=0, peer=False))


def test_make_calls_builds_valid_openai_calls() -> None:
    calls = make_calls("arithmetic", random.Random(1))
    assert len(calls) == BATCH_SIZE
    assert len({c["id"] for c in calls}) == BATCH_SIZE
    names = {bt_fn.__name__ for bt_fn in bt.ARITHMETIC}
    for call in calls:
        assert call["type"] == "function"
        assert call["function"]["name"] in names
        args = json.loads(call["function"]["arguments"])
        assert args["b"] >= 1  # no division by zero
    sleeps = make_calls("sleep_async", random.Random(1), size=3)
    assert [c["function"]["name"] for c in sleeps] == ["sleep_async"] * 3


def _result(corral_s: float, *peers: tuple[str, float]) -> WorkloadResult:
    workload = next(w for w in WORKLOADS if w.key == "sleep-async")  # a ratio and an ideal
    return WorkloadResult(
        workload,
        corral=Samples("corral", (corral_s, corral_s)),
        peers=tuple(Samples(label, (s, s)) for label, s in peers),
    )


def test_ratio_uses_the_faster_peer_and_the_ideal_counts() -> None:
    result = _result(0.022, ("slow", 1.0), ("fast", 0.4))
    assert result.best_peer is not None
    assert result.best_peer.label == "fast"
    assert result.ratio == pytest.approx(0.4 / 0.022)
    assert result.within_ideal is True
    assert result.passed is True

    too_slow = _result(0.030, ("fast", 0.4))  # ratio fine, but 30 ms > 20 ms + 15%
    assert too_slow.within_ideal is False
    assert too_slow.passed is False

    rendered = _render(summary_table([result, too_slow]))
    assert "pass" in rendered
    assert "FAIL" in rendered
    assert "18.2x" in rendered


def test_samples_percentiles() -> None:
    samples = Samples("x", tuple(i / 1000 for i in range(1, 11)))
    assert samples.median_ms == pytest.approx(5.5)
    assert samples.p90_ms == pytest.approx(9.1)
    assert Samples("one", (0.002,)).p90_ms == pytest.approx(2.0)


_FAKE_TOOLREGISTRY = """
import inspect
import json

__version__ = "0.0-fake"


class ErrorResult:
    def __init__(self, message):
        self.message = message

    def __str__(self):
        return self.message


class ToolRegistry:
    def __init__(self):
        self.tools = {}

    def register(self, fn):
        self.tools[fn.__name__] = fn

    def _start(self, call):
        fn = self.tools[call["function"]["name"]]
        return fn(**json.loads(call["function"]["arguments"]))

    def execute_tool_calls(self, calls, execution_mode=None):
        out = []
        for call in calls:
            try:
                out.append(self._start(call))
            except Exception as exc:
                out.append(ErrorResult(repr(exc)))
        return out

    async def aexecute_tool_calls(self, calls, execution_mode=None):
        out = []
        for call in calls:
            value = self._start(call)
            out.append(await value if inspect.isawaitable(value) else value)
        return out

    def close(self, wait=False):
        pass
"""


def _call(name: str, **arguments: float) -> dict[str, object]:
    function = {"name": name, "arguments": json.dumps(arguments)}
    return {"id": f"c_{name}", "type": "function", "function": function}


async def test_peer_protocol_against_a_fake_toolregistry(tmp_path: Path) -> None:
    package = tmp_path / "site" / "toolregistry"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(_FAKE_TOOLREGISTRY))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    log = tmp_path / "peer" / "peer.log"

    async with open_peer(Path(sys.executable), log, env=env) as peer:
        assert peer.version == "0.0-fake"
        sync = await peer.run("w", Variant("sync", "thread"), [_call("add", a=1, b=2)])
        assert sync >= 0
        sleeps = [_call("sleep_async", tag=1)]
        assert await peer.run("w", Variant("async", None), sleeps) >= bt.SLEEP_S
        with pytest.raises(BenchError, match="1 ToolRegistry calls of w"):
            await peer.run("w", Variant("sync", "thread"), [_call("divide", a=1, b=0)])
        with pytest.raises(BenchError, match="api must be"):
            await peer.request(
                {"op": "run", "registry": "w", "api": "x", "calls": []}, timeout_s=10
            )
        # The peer survives a failed command.
        assert await peer.run("w", Variant("sync", None), [_call("multiply", a=2, b=3)]) >= 0
    await peer.aclose()  # idempotent
