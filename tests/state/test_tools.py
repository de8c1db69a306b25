"""Memory as agent tools, run through a real ToolRegistry batch."""

from __future__ import annotations

import json
from typing import Any

import pytest

import corral
from corral.state import Store, Tenant, register_memory_tools

W = "workspace:team"


def call(call_id: str, name: str, **arguments: Any) -> corral.ToolCall:
    return corral.ToolCall(id=call_id, name=name, arguments=arguments)


@pytest.fixture
async def tools(registry: corral.ToolRegistry, store: Store, tenant: Tenant) -> corral.ToolRegistry:
    register_memory_tools(registry, store, tenant_id=tenant.id, scope=W, writer="planner")
    return registry


async def test_the_tools_declare_the_key_they_touch(tools: corral.ToolRegistry) -> None:
    names = [s["function"]["name"] for s in tools.schemas()]
    assert names == ["memory_read", "memory_write", "memory_append", "memory_increment"]
    write = next(s for s in tools.schemas() if s["function"]["name"] == "memory_write")
    params = write["function"]["parameters"]
    assert set(params["required"]) == {"key", "value", "version"}
    assert "ctx" not in params["properties"]
    # Same key: the write waits for the read before it. Other keys: no waiting.
    plan = tools.plan(
        [
            call("r", "memory_read", key="plan"),
            call("w", "memory_write", key="plan", value=1, version=1),
            call("o", "memory_write", key="other", value=1, version=0),
        ]
    )
    assert [e.before for e in plan.waits_for(1)] == [0]
    assert plan.waits_for(2) == ()


async def test_a_read_then_a_write_of_one_key_run_in_order(
    tools: corral.ToolRegistry, store: Store, tenant: Tenant
) -> None:
    await store.memory_put(tenant.id, W, "plan", ["a"], if_version=None, writer="setup")
    results = await tools.execute(
        [
            call("r", "memory_read", key="plan"),
            call("w", "memory_write", key="plan", value=["a", "b"], version=1),
        ]
    )
    read, write = results
    assert read.ok, read.error
    assert write.ok, write.error
    assert read.value == {"version": 1, "value": ["a"]}  # the read saw the value before the write
    assert write.value == {"version": 2}
    assert read.finished_at is not None
    assert write.started_at is not None
    assert read.finished_at <= write.started_at
    stored = await store.memory_get(tenant.id, W, "plan")
    assert stored is not None
    assert (stored.value, stored.version, stored.updated_by) == (["a", "b"], 2, "planner/w")


async def test_a_stale_write_comes_back_as_an_error_naming_the_current_version(
    tools: corral.ToolRegistry, store: Store, tenant: Tenant
) -> None:
    t = tenant.id
    await store.memory_put(t, W, "event", {"time": "09:00"}, if_version=None, writer="setup")
    (read,) = await tools.execute([call("r", "memory_read", key="event")])
    assert read.value["version"] == 1
    human = await store.memory_patch(t, W, "event", {"room": "B"}, if_version=1, writer="human")

    (write,) = await tools.execute(
        [call("w", "memory_write", key="event", value={"time": "10:00"}, version=1)]
    )
    assert write.status == corral.Status.ERROR
    assert write.error is not None
    assert write.error.type == "VersionConflict"
    text = write.content()
    assert "is at version 2, not 1" in text
    assert "last written by human" in text
    assert json.dumps(human.value) in text
    assert "write it with version 2" in text
    assert await store.memory_get(t, W, "event") == human  # the human's edit survives

    # Re-read, redo the change on the current value, write with the current version: accepted.
    redo = {**human.value, "time": "10:00"}  # type: ignore[dict-item]
    (retry,) = await tools.execute([call("w2", "memory_write", key="event", value=redo, version=2)])
    assert retry.ok
    assert retry.value == {"version": 3}


async def test_version_zero_or_null_creates_and_only_creates(
    tools: corral.ToolRegistry, store: Store, tenant: Tenant
) -> None:
    results = await tools.execute(
        [
            call("m", "memory_read", key="new"),
            call("a", "memory_write", key="a", value="x", version=0),
            call("b", "memory_write", key="b", value="y", version=None),
            call("c", "memory_write", key="gone", value="z", version=4),
        ]
    )
    missing, a, b, gone = results
    assert missing.value == {"version": 0, "value": None}
    assert a.value == {"version": 1}
    assert b.value == {"version": 1}
    assert gone.status == corral.Status.ERROR
    assert "does not exist" in gone.content()
    assert "version 0 to create it" in gone.content()
    (again,) = await tools.execute([call("d", "memory_write", key="a", value="w", version=0)])
    assert again.status == corral.Status.ERROR
    assert "is at version 1, not 0" in again.content()
    stored = await store.memory_get(tenant.id, W, "a")
    assert stored is not None
    assert stored.value == "x"


async def test_appends_and_increments_in_one_batch_all_land(
    tools: corral.ToolRegistry, store: Store, tenant: Tenant
) -> None:
    calls = [call(f"i{i}", "memory_increment", key="count") for i in range(10)]
    calls += [call(f"a{i}", "memory_append", key="notes", item={"n": i}) for i in range(5)]
    calls.append(call("f", "memory_increment", key="score", by=0.5))
    results = await tools.execute(calls)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    count = await store.memory_get(tenant.id, W, "count")
    notes = await store.memory_get(tenant.id, W, "notes")
    assert count is not None
    assert notes is not None
    assert (count.value, count.version) == (10, 10)
    assert notes.value == [{"n": i} for i in range(5)]  # one key's calls run in emitted order
    assert results[-1].value == {"version": 1, "value": 0.5}
    writers = [e.writer for e in await tool_audit(store, tenant, "count")]
    assert writers == [f"planner/i{i}" for i in range(10)]


async def tool_audit(store: Store, tenant: Tenant, key: str) -> list[Any]:
    return await store.audit(tenant.id, scope=W, key=key)


async def test_a_bad_scope_is_refused_when_the_tools_are_made(
    registry: corral.ToolRegistry, store: Store, tenant: Tenant
) -> None:
    with pytest.raises(corral.UsageError, match="memory scope 'team'"):
        register_memory_tools(registry, store, tenant_id=tenant.id, scope="team")
    assert len(registry) == 0
