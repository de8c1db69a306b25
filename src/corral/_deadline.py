"""The deadline of the tool call running in the current task, for tools that retry or wait.

The scheduler sets it (on the event loop's clock) in each call's task before the call runs, so a
remote tool can tell how long it may still back off before its timeout fires.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

__all__ = ["current_deadline", "remaining_s"]

current_deadline: ContextVar[float | None] = ContextVar("corral_call_deadline", default=None)
"""`loop.time()` at which the current call times out, or None for no deadline."""


def remaining_s() -> float | None:
    """Return the seconds left before the current call's deadline, or None if it has none."""
    deadline = current_deadline.get()
    if deadline is None:
        return None
    return max(0.0, deadline - asyncio.get_running_loop().time())
