"""Versioned memory as agent tools: read with a version, write only on the version read.

The tools bind one store, tenant and scope. `memory_read` returns the version with the value, and
`memory_write` must send it back: a stale write is refused and comes back to the model as an
error result that names the current version and value, so the model redoes its change on what is
there now instead of overwriting someone else's. Appends and increments need no version.

Each tool declares the memory key it touches (``memory:{key}``), so within one batch the
scheduler runs a read and a write of the same key in the order the model asked for them, and
calls on different keys at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from corral.errors import VersionConflict
from corral.state import _rules
from corral.state.base import Store
from corral.tools import Tool, ToolContext, ToolRegistry, tool

__all__ = ["memory_tools", "register_memory_tools"]

_SHOWN_CHARS = 2000
"""How much of the current value a conflict message shows the model."""


def memory_tools(
    store: Store, *, tenant_id: str, scope: str, writer: str = "agent"
) -> list[Callable[..., Any]]:
    """Return `memory_read`, `memory_write`, `memory_append` and `memory_increment` tools.

    Args:
        store: Where the memory lives.
        tenant_id: The tenant whose memory the tools use.
        scope: ``session:<id>``, ``agent:<name>`` or ``workspace:<name>``.
        writer: Recorded in the audit log as who wrote, followed by the tool call's id.

    Register them with `ToolRegistry.register` (or use `register_memory_tools`); they are async
    and run on the registry's event loop, which must be the store's.
    """
    _rules.check_scope(scope)
    _rules.check_text(writer, "writer", max_len=120)

    def who(ctx: ToolContext) -> str:
        return f"{writer}/{ctx.call_id}"[:200]

    async def memory_read(key: str) -> dict[str, Any]:
        """Read a memory value and its version.

        Returns {"version": n, "value": ...}; a key that does not exist has version 0 and value
        null. Keep the version: memory_write needs it.
        """
        record = await store.memory_get(tenant_id, scope, key)
        if record is None:
            return {"version": 0, "value": None}
        return {"version": record.version, "value": record.value}

    async def memory_write(
        key: str, value: Any, version: int | None, ctx: ToolContext
    ) -> dict[str, Any]:
        """Replace a memory value, only if it is still at the version you read.

        Pass the version memory_read returned (0 or null to create a new key). If someone
        changed the value since you read it, nothing is written and you get an error with the
        current version and value: redo your change on that value and write again with that
        version. Returns {"version": new version}.
        """
        expected = version or None
        try:
            record = await store.memory_put(
                tenant_id, scope, key, value, if_version=expected, writer=who(ctx)
            )
        except VersionConflict as exc:
            raise _for_the_model(exc) from None
        return {"version": record.version}

    async def memory_append(key: str, item: Any, ctx: ToolContext) -> dict[str, Any]:
        """Append an item to the list stored at a key (created if missing); needs no version.

        Concurrent appends all land. Returns {"version": new version, "length": items}.
        """
        record = await store.memory_append(tenant_id, scope, key, item, writer=who(ctx))
        assert isinstance(record.value, list)
        return {"version": record.version, "length": len(record.value)}

    async def memory_increment(key: str, ctx: ToolContext, by: int | float = 1) -> dict[str, Any]:
        """Add to the number stored at a key (created from 0 if missing); needs no version.

        Concurrent increments all count. Returns {"version": new version, "value": total}.
        """
        record = await store.memory_increment(tenant_id, scope, key, by, writer=who(ctx))
        return {"version": record.version, "value": record.value}

    # Marked, not wrapped: `register` reads the claims from the function itself.
    tool(memory_read, reads="memory:{key}")
    for fn in (memory_write, memory_append, memory_increment):
        tool(fn, writes="memory:{key}")
    return [memory_read, memory_write, memory_append, memory_increment]


def register_memory_tools(
    registry: ToolRegistry, store: Store, *, tenant_id: str, scope: str, writer: str = "agent"
) -> list[Tool]:
    """Register the `memory_tools` in `registry`; return them."""
    fns = memory_tools(store, tenant_id=tenant_id, scope=scope, writer=writer)
    return [registry.register(fn) for fn in fns]


def _for_the_model(exc: VersionConflict) -> VersionConflict:
    """Return the conflict with a message that tells the model what to do next."""
    current = exc.current
    if current is None:
        message = (
            f"memory key {exc.key!r} does not exist (you passed version {exc.expected}); "
            "it was deleted or never created. Nothing was written. Write it with version 0 "
            "to create it."
        )
    else:
        shown = json.dumps(current.value, ensure_ascii=False)
        if len(shown) > _SHOWN_CHARS:
            shown = shown[:_SHOWN_CHARS] + "... (cut; call memory_read for all of it)"
        message = (
            f"memory key {exc.key!r} is at version {current.version}, not "
            f"{exc.expected or 0}: it changed since you read it (last written by "
            f"{current.updated_by}). Nothing was written. Its current value is {shown}. Redo "
            f"your change on this value and write it with version {current.version}."
        )
    return VersionConflict(
        message, key=exc.key, expected=exc.expected, actual=exc.actual, current=current
    )
