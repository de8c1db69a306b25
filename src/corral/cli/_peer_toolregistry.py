"""The ToolRegistry side of `corral bench tools`: a long-lived peer in ToolRegistry's own venv.

Run as a script by that venv's interpreter; it needs only the standard library, `toolregistry`,
and `_bench_tools.py` beside this file (the script's directory is `sys.path[0]`, and worker
processes started with spawn or forkserver inherit that path). It never imports corral.

Protocol, one JSON object per line. On start the peer writes
`{"ok": true, "ready": true, "version": ...}`. Then, for each command read from stdin:

- `{"op": "run", "registry": KEY, "api": "sync"|"async", "mode": "thread"|"process"|null,
  "calls": [OpenAI tool calls]}` runs the calls once on the registry named KEY (made on first
  use) and answers `{"ok": true, "elapsed_s": S, "failed": N}`; S is measured here, around
  `execute_tool_calls` or `aexecute_tool_calls` only.
- `{"op": "quit"}` closes every registry, answers `{"ok": true}` and exits.

A failing command answers `{"ok": false, "error": "..."}` and the peer keeps going.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import _bench_tools  # type: ignore[import-not-found]
import toolregistry  # type: ignore[import-not-found]

_TOOLS = (*_bench_tools.ARITHMETIC, _bench_tools.sleep_blocking, _bench_tools.sleep_async)


class Peer:
    """ToolRegistry instances, one per key, and an event loop for the async API."""

    def __init__(self, runner: asyncio.Runner) -> None:
        self._runner = runner
        self._registries: dict[str, toolregistry.ToolRegistry] = {}

    def registry(self, key: str) -> toolregistry.ToolRegistry:
        """Return the registry named `key`, made with every bench tool on first use."""
        reg = self._registries.get(key)
        if reg is None:
            reg = toolregistry.ToolRegistry()
            for fn in _TOOLS:
                reg.register(fn)
            self._registries[key] = reg
        return reg

    def run(self, command: dict[str, Any]) -> dict[str, Any]:
        """Run one batch as the command asks and return its elapsed seconds."""
        reg = self.registry(str(command["registry"]))
        calls = command["calls"]
        mode = command.get("mode")
        if command["api"] == "sync":
            started = time.perf_counter()
            results = reg.execute_tool_calls(calls, execution_mode=mode)
            elapsed = time.perf_counter() - started
        elif command["api"] == "async":
            elapsed, results = self._runner.run(_timed_async(reg, calls, mode))
        else:
            raise ValueError(f"api must be 'sync' or 'async', got {command['api']!r}")
        failed = [str(r) for r in results if type(r).__name__ == "ErrorResult"]
        if len(results) != len(calls):
            failed.append(f"{len(results)} results for {len(calls)} calls")
        return {"ok": True, "elapsed_s": elapsed, "failed": len(failed), "errors": failed[:3]}

    def close(self) -> None:
        """Close every registry, waiting for their pools to shut down."""
        for reg in self._registries.values():
            reg.close(wait=True)
        self._registries.clear()


async def _timed_async(
    reg: toolregistry.ToolRegistry, calls: list[Any], mode: str | None
) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    results = await reg.aexecute_tool_calls(calls, execution_mode=mode)
    return time.perf_counter() - started, list(results)


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve() -> None:
    """Answer commands from stdin until `quit` or end of input."""
    with asyncio.Runner() as runner:
        peer = Peer(runner)
        try:
            _answer({"ok": True, "ready": True, "version": toolregistry.__version__})
            for line in sys.stdin:
                if not line.strip():
                    continue
                try:
                    command = json.loads(line)
                    if command.get("op") == "quit":
                        break
                    _answer(peer.run(command))
                except Exception as exc:
                    _answer({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        finally:
            peer.close()
    _answer({"ok": True})


if __name__ == "__main__":  # process workers started by spawn or forkserver import this module
    serve()
