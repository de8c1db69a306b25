"""The tools of the demo batch; module-level so process-mode workers import them by path."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

# The server's demo agent has the same calculator: one for both (it refuses `**`, which would let
# a message make the server compute 9**9**9).
from corral.server._demo import calculate

__all__ = ["calculate", "fetch", "fib", "flaky", "list_dir", "read_file", "shell", "write_file"]


def read_file(path: Path) -> str:
    """Return the text of a file."""
    time.sleep(0.03)  # a slow disk, so the timeline shows who waited for whom
    return path.read_text()


def write_file(path: Path, text: str) -> int:
    """Write text to a file and return the number of characters written."""
    time.sleep(0.04)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.write_text(text)


def list_dir(path: Path) -> list[str]:
    """List the names in a directory."""
    time.sleep(0.02)
    return sorted(p.name for p in path.iterdir())


async def fetch(url: str) -> str:
    """Fetch a URL (simulated: the demo stays offline)."""
    await asyncio.sleep(0.05)
    return f"<html>{url}</html>"


def fib(n: int) -> int:
    """Compute a Fibonacci number the slow way (CPU-bound: runs in a worker process)."""
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def shell(command: str) -> str:
    """Run a shell command (simulated).

    It declares nothing, so it runs alone among the undeclared tools.
    """
    time.sleep(0.03)
    return f"$ {command}\nok"


def flaky(message: str) -> str:
    """Fail, to show that one failure does not sink its siblings."""
    raise RuntimeError(message)
