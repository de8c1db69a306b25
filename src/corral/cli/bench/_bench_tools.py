"""The tools `corral bench tools` runs, on both sides of the comparison.

Module-level and stdlib-only: corral's worker processes import them by module path, and the
ToolRegistry peer (which runs in its own virtual environment, without corral) imports this file
as the top-level module `_bench_tools`.
"""

from __future__ import annotations

import asyncio
import time

SLEEP_S = 0.02
"""How long each sleep tool waits: the ideal time of a whole batch of them."""


def add(a: float, b: float) -> float:
    """Return a + b."""
    return a + b


def subtract(a: float, b: float) -> float:
    """Return a - b."""
    return a - b


def multiply(a: float, b: float) -> float:
    """Return a * b."""
    return a * b


def divide(a: float, b: float) -> float:
    """Return a / b."""
    return a / b


def sleep_blocking(tag: int) -> int:
    """Block the calling thread for 20 ms, then return `tag`."""
    time.sleep(SLEEP_S)
    return tag


async def sleep_async(tag: int) -> int:
    """Wait 20 ms without blocking the event loop, then return `tag`."""
    await asyncio.sleep(SLEEP_S)
    return tag


ARITHMETIC = (add, subtract, multiply, divide)
