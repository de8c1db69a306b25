"""`corral demo`: run one mixed batch and print its timeline."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from rich.console import Console

import corral
from corral.cli import _demo_tools as t
from corral.cli._timeline import timeline_table

__all__ = ["demo_registry", "run_demo"]


def demo_registry(cwd: Path) -> corral.ToolRegistry:
    """Return a registry with the demo tools, resolving paths against `cwd`."""
    reg = corral.ToolRegistry(cwd=cwd)
    reg.register(t.read_file, read_only=True)
    reg.register(t.write_file)  # a Path parameter: writes file:{path}
    reg.register(t.list_dir, read_only=True)
    reg.register(t.fetch, read_only=True)
    reg.register(t.fib, read_only=True, mode="process", timeout=10)
    reg.register(t.shell)
    reg.register(t.flaky)
    reg.register(t.calculate, read_only=True)
    return reg


DEMO_CALLS = [
    corral.ToolCall("w1", "write_file", {"path": "notes/todo.txt", "text": "buy milk"}),
    corral.ToolCall("r1", "read_file", {"path": "notes/todo.txt"}),
    corral.ToolCall(
        "w2", "write_file", {"path": "notes/../notes/todo.txt", "text": "buy oat milk"}
    ),
    corral.ToolCall("l1", "list_dir", {"path": "notes"}),
    corral.ToolCall("w3", "write_file", {"path": "report.md", "text": "# report"}),
    corral.ToolCall("f1", "fetch", {"url": "https://example.com/a"}),
    corral.ToolCall("f2", "fetch", {"url": "https://example.com/b"}),
    corral.ToolCall("p1", "fib", {"n": 22}),
    corral.ToolCall("s1", "shell", {"command": "make build"}),
    corral.ToolCall("s2", "shell", {"command": "make test"}),
    corral.ToolCall("x1", "flaky", {"message": "the network is down"}),
]


async def _run(console: Console, workdir: Path) -> None:
    async with demo_registry(workdir) as reg:
        results = await reg.execute(DEMO_CALLS, timeout=30)
    title = "corral: one model message, 11 tool calls"
    console.print(timeline_table(results, title=title, base=str(workdir)))
    console.print(
        "Calls on the same file ran in the order the model emitted them; the two undeclared "
        "shell calls ran one at a time; everything else overlapped. The failed call did not "
        "stop its siblings."
    )


def run_demo(console: Console | None = None) -> None:
    """Run the demo batch and print its timeline."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=170)
    with tempfile.TemporaryDirectory(prefix="corral-demo-") as tmp:
        asyncio.run(_run(console, Path(os.path.realpath(tmp))))
