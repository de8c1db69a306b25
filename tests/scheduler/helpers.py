"""Small builders shared by the scheduler tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import corral
from corral.testing import Gate

T = TypeVar("T")

MakeRegistry = Callable[..., corral.ToolRegistry]
"""The `make_registry` fixture: `make_registry(**ToolRegistry options)`."""


def call(
    call_id: str,
    name: str,
    /,
    *,
    depends_on: Sequence[str] = (),
    timeout: float | None = None,
    **arguments: Any,
) -> corral.ToolCall:
    """Return a `ToolCall` of tool `name` with keyword arguments."""
    return corral.ToolCall(call_id, name, arguments, depends_on=tuple(depends_on), timeout=timeout)


def statuses(results: corral.ToolResults) -> dict[str, str]:
    """Return each call's status by id, as plain strings for readable assertion diffs."""
    return {r.id: r.status.value for r in results}


async def released_when_all_arrive(
    awaitable: Coroutine[Any, Any, T], gate: Gate, count: int, *, timeout_s: float = 5.0
) -> T:
    """Run `awaitable`; once `count` calls wait at `gate` at the same time, open it.

    This proves they were all in flight at once without sleeping. If they never all arrive (a
    call was wrongly held back) the run is cancelled and the test fails naming how many came.
    """
    task = asyncio.create_task(awaitable)
    try:
        async with asyncio.timeout(timeout_s):
            await gate.wait_for(count)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise AssertionError(
            f"only {gate.arrived} of {count} calls were in flight together"
        ) from None
    gate.open()
    async with asyncio.timeout(timeout_s):
        return await task


def closing(stream: AsyncIterator[T]) -> contextlib.aclosing[AsyncGenerator[T, None]]:
    """Wrap `ToolRegistry.stream(...)` in `contextlib.aclosing`.

    `stream` is annotated as an `AsyncIterator`, which has no `aclose()` for mypy; it is an
    async generator, and closing it at once is what cancels the calls still running.
    """
    assert isinstance(stream, AsyncGenerator), type(stream)
    return contextlib.aclosing(stream)
