"""The bench agent's tools: `add` and `multiply`, each awaiting 20 ms like a quick remote call."""

from __future__ import annotations

import asyncio

import corral

__all__ = ["TOOL_WAIT_S", "registry"]

TOOL_WAIT_S = 0.020

registry = corral.ToolRegistry()


async def add(a: int, b: int) -> int:
    """Add two integers."""
    await asyncio.sleep(TOOL_WAIT_S)
    return a + b


async def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    await asyncio.sleep(TOOL_WAIT_S)
    return a * b


for _tool in (add, multiply):
    registry.register(_tool, read_only=True)  # pure: calls of one message run at once
