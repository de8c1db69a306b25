"""`corral bench tools`: corral and ToolRegistry 0.19.0 side by side, alternating, in one run.

ToolRegistry runs in its own virtual environment (made on first use under `.bench/`), inside a
long-lived peer process (`_peer_toolregistry.py`) that this process drives with JSON lines. Each
round generates one batch of 100 calls and runs it once on every side (corral, and each
ToolRegistry API/mode) in a random order; both sides time only their own execute call. The
figures are medians over the measured rounds, warm-up rounds excluded.

Four workloads call Python functions in-process; three call a calculator server the bench starts
on 127.0.0.1 (`_calculator_server.py`): over OpenAPI, over MCP with SSE and over MCP with
streamable HTTP. Both sides call the same server processes.

Modules: `_workloads` (what runs), `_peer` (ToolRegistry's venv and process), `_servers` (the
calculator servers), `_measure` (rounds and samples), `_report` (tables and JSON), `_run` (the
command, in order).
"""

from __future__ import annotations

from corral.cli.bench._peer import TOOLREGISTRY_VERSION, Peer, ensure_peer_env, open_peer
from corral.cli.bench._report import (
    BenchReport,
    Samples,
    WorkloadResult,
    detail_table,
    summary_table,
)
from corral.cli.bench._run import run_tools_bench
from corral.cli.bench._workloads import (
    BATCH_SIZE,
    WORKLOADS,
    BenchError,
    BenchOptions,
    Variant,
    Workload,
    make_calls,
    select_workloads,
)

__all__ = [
    "BATCH_SIZE",
    "TOOLREGISTRY_VERSION",
    "WORKLOADS",
    "BenchError",
    "BenchOptions",
    "BenchReport",
    "Peer",
    "Samples",
    "Variant",
    "Workload",
    "WorkloadResult",
    "detail_table",
    "ensure_peer_env",
    "make_calls",
    "open_peer",
    "run_tools_bench",
    "select_workloads",
    "summary_table",
]
