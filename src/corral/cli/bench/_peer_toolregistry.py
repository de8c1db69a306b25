"""The ToolRegistry side of `corral bench tools`: a long-lived peer in ToolRegistry's own venv.

Run as a script by that venv's interpreter; it needs only the standard library, `toolregistry`,
and `_bench_tools.py` beside this file (the script's directory is `sys.path[0]`, and worker
processes started with spawn or forkserver inherit that path). It never imports corral.

Protocol, one JSON object per line. On start the peer writes
`{"ok": true, "ready": true, "version": ...}`. Then, for each command read from stdin:

- `{"op": "run", "registry": KEY, "api": "sync"|"async", "mode": "thread"|"process"|null,
  "calls": [OpenAI tool calls], "source": SOURCE}` runs the calls once on the registry named KEY
  (made on first use) and answers `{"ok": true, "elapsed_s": S, "failed": N}`; S is measured
  here, around `execute_tool_calls` or `aexecute_tool_calls` only. Without SOURCE the registry
  holds the Python bench tools; with `{"kind": "openapi", "url": SPEC_URL}` or
  `{"kind": "mcp", "url": SSE_OR_HTTP_URL}` it holds a calculator server's tools, registered
  as ToolRegistry documents (`register(..., source="openapi" | "mcp")`) through the API the
  command uses, so that its connections live where its calls run: on this peer's event loop for
  the async API, on ToolRegistry's own background loop for the sync API.
- `{"op": "quit"}` closes every registry, answers `{"ok": true}` and exits.

A failing command answers `{"ok": false, "error": "..."}` and the peer keeps going.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import _bench_tools  # type: ignore[import-not-found]
import toolregistry  # type: ignore[import-not-found]

_TOOLS = (*_bench_tools.ARITHMETIC, _bench_tools.sleep_blocking, _bench_tools.sleep_async)


class Peer:
    """ToolRegistry instances, one per key, and an event loop for the async API."""

    def __init__(self, runner: asyncio.Runner) -> None:
        self._runner = runner
        self._registries: dict[str, toolregistry.ToolRegistry] = {}
        self._async_registries: set[str] = set()

    def registry(
        self, key: str, source: dict[str, str] | None, api: str
    ) -> toolregistry.ToolRegistry:
        """Return the registry named `key`, made with its tools on first use."""
        reg = self._registries.get(key)
        if reg is None:
            reg = toolregistry.ToolRegistry()
            if source is None:
                for fn in _TOOLS:
                    reg.register(fn)
            elif api == "async":
                self._runner.run(_register_remote_async(reg, source))
                self._async_registries.add(key)
            else:
                _register_remote(reg, source)
            self._registries[key] = reg
        return reg

    def run(self, command: dict[str, Any]) -> dict[str, Any]:
        """Run one batch as the command asks and return its elapsed seconds."""
        api = command["api"]
        if api not in ("sync", "async"):
            raise ValueError(f"api must be 'sync' or 'async', got {api!r}")
        reg = self.registry(str(command["registry"]), command.get("source"), api)
        calls = command["calls"]
        mode = command.get("mode")
        if api == "sync":
            started = time.perf_counter()
            results = reg.execute_tool_calls(calls, execution_mode=mode)
            elapsed = time.perf_counter() - started
        else:
            elapsed, results = self._runner.run(_timed_async(reg, calls, mode))
        failed = [str(r) for r in results if type(r).__name__ == "ErrorResult"]
        if len(results) != len(calls):
            failed.append(f"{len(results)} results for {len(calls)} calls")
        return {"ok": True, "elapsed_s": elapsed, "failed": len(failed), "errors": failed[:3]}

    def close(self) -> None:
        """Close every registry, waiting for their pools and connections to shut down."""
        for key, reg in self._registries.items():
            if key in self._async_registries:
                self._runner.run(reg.close_async(wait=True))
            else:
                reg.close(wait=True)
        self._registries.clear()


def _register_remote(reg: toolregistry.ToolRegistry, source: dict[str, str]) -> None:
    if source["kind"] == "mcp":
        reg.register(source["url"], source="mcp")
        return
    from toolregistry.integrations.openapi import (  # type: ignore[import-not-found]
        HttpClientConfig,
        load_openapi_spec,
    )

    spec = load_openapi_spec(source["url"])
    client = HttpClientConfig(base_url=_origin(source["url"]))
    reg.register(client, source="openapi", openapi_spec=spec, spec_url=source["url"])


async def _register_remote_async(reg: toolregistry.ToolRegistry, source: dict[str, str]) -> None:
    if source["kind"] == "mcp":
        await reg.register_async(source["url"], source="mcp")
        return
    from toolregistry.integrations.openapi import (
        HttpClientConfig,
        load_openapi_spec_async,
    )

    spec = await load_openapi_spec_async(source["url"])
    client = HttpClientConfig(base_url=_origin(source["url"]))
    await reg.register_async(client, source="openapi", openapi_spec=spec, spec_url=source["url"])


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


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
