"""corral vs ToolRegistry 0.19.0 on 100-call workloads; the same code as `corral bench tools`.

    .venv/bin/python benchmarks/bench_tools.py [--rounds N] [--json PATH] [--no-peer]
        [--workload all|local|remote|mcp|arith-thread,openapi,mcp-sse,mcp-http,...]

Four workloads call Python functions; three call a calculator server that the bench starts on
127.0.0.1 (OpenAPI; MCP over SSE; MCP over streamable HTTP) and stops at the end.
ToolRegistry runs in its own venv, made on first use under .bench/ (needs PyPI once).
"""

from __future__ import annotations

import sys

from corral.cli import app


def main(argv: list[str]) -> None:
    app(["bench", "tools", *argv], prog_name="bench_tools.py")


if __name__ == "__main__":
    main(sys.argv[1:])
