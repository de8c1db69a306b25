"""Tool functions the tests register; module-level so worker processes import them by path."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import time
from pathlib import Path


def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


def pid() -> int:
    """Return the process id of whoever runs this."""
    return os.getpid()


def sleep_ms(ms: int) -> int:
    """Block for `ms` milliseconds."""
    time.sleep(ms / 1000)
    return ms


async def async_sleep_ms(ms: int) -> int:
    """Wait `ms` milliseconds without blocking."""
    await asyncio.sleep(ms / 1000)
    return ms


def exit_now(code: int = 3) -> None:
    """End the process at once, with no clean-up."""
    os._exit(code)


def segfault() -> None:
    """Crash the process with SIGSEGV."""
    ctypes.string_at(0)


def kill_self() -> None:
    """Kill the process with SIGKILL."""
    os.kill(os.getpid(), signal.SIGKILL)


def unpicklable() -> object:
    """Return a value that cannot be pickled."""
    return lambda: None


def chatty(n: int) -> int:
    """Print to stdout, which must not corrupt the worker protocol."""
    for i in range(n):
        print(f"noise {i}", flush=True)
    return n


def append_line(path: Path, text: str, delay_ms: int = 0) -> int:
    """Read the file, wait, and write it back with one more line: a read-modify-write."""
    before = path.read_text() if path.exists() else ""
    time.sleep(delay_ms / 1000)
    path.write_text(before + text + "\n")
    return len(before)
