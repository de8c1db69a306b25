from __future__ import annotations

import corral


def test_all_is_sorted_and_complete() -> None:
    names = [n for n in corral.__all__ if n != "__version__"]
    assert names == sorted(names)
    for name in corral.__all__:
        assert hasattr(corral, name), name


def test_exceptions_claim_the_corral_module_and_dataclasses_stay_resolvable() -> None:
    import typing

    assert corral.UsageError.__module__ == "corral"
    assert corral.ToolResult.__module__ == "corral.scheduler._outcome"
    assert "status" in typing.get_type_hints(corral.ToolResult)
    assert "content" in typing.get_type_hints(corral.Message)


async def test_quickstart_runs(registry: corral.ToolRegistry) -> None:
    @registry.tool(read_only=True)
    def add(a: int, b: int) -> int:
        return a + b

    results = await registry.execute(
        [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
            }
        ]
    )
    assert results[0].status == corral.Status.OK
    assert results[0].value == 3
