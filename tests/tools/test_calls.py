from __future__ import annotations

import json
import re
from typing import Any

import pytest

import corral
from corral import Status, ToolCall


def openai(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def anthropic(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


@pytest.fixture
def reg(registry: corral.ToolRegistry) -> corral.ToolRegistry:
    @registry.tool(read_only=True)
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return registry


async def test_all_three_formats_in_one_batch(reg: corral.ToolRegistry) -> None:
    results = await reg.execute(
        [
            openai("o1", "add", {"a": 1, "b": 2}),
            anthropic("a1", "add", {"a": 3, "b": 4}),
            ToolCall("t1", "add", {"a": 5, "b": 6}),
            {"type": "function_call", "call_id": "r1", "name": "add", "arguments": '{"a":7,"b":8}'},
        ]
    )
    assert [(r.id, r.status, r.value) for r in results] == [
        ("o1", Status.OK, 3),
        ("a1", Status.OK, 7),
        ("t1", Status.OK, 11),
        ("r1", Status.OK, 15),
    ]


async def test_sdk_objects_are_read_through_model_dump(reg: corral.ToolRegistry) -> None:
    class SdkCall:
        def model_dump(self) -> dict[str, Any]:
            return openai("s1", "add", {"a": 1, "b": 1})

    results = await reg.execute([SdkCall()])
    assert results[0].value == 2


async def test_arguments_are_coerced(reg: corral.ToolRegistry) -> None:
    results = await reg.execute([openai("c1", "add", {"a": "40", "b": 2})])
    assert results[0].value == 42


async def test_empty_arguments_string_means_no_arguments(registry: corral.ToolRegistry) -> None:
    @registry.tool(read_only=True)
    def ping() -> str:
        return "pong"

    results = await registry.execute([openai("c1", "ping", "")])
    assert results[0].value == "pong"


@pytest.mark.parametrize(
    ("call", "kind", "fragment"),
    [
        (openai("c1", "nope", {}), "ToolNotFound", "tool 'nope' is not registered (known: add)"),
        (openai("c1", "add", '{"a": 1,'), "ToolArgumentsInvalid", "are not valid JSON"),
        (openai("c1", "add", "[1, 2]"), "ToolArgumentsInvalid", "must be a JSON object, got list"),
        (openai("c1", "add", {"a": 1}), "ToolArgumentsInvalid", "b: missing required argument"),
        (
            openai("c1", "add", {"a": 1, "b": "x"}),
            "ToolArgumentsInvalid",
            "b: Input should be a valid integer",
        ),
        (
            openai("c1", "add", {"a": 1, "b": 2, "c": 3}),
            "ToolArgumentsInvalid",
            "c: unexpected argument",
        ),
    ],
)
async def test_bad_calls_get_an_error_result_and_never_run(
    registry: corral.ToolRegistry, call: dict[str, Any], kind: str, fragment: str
) -> None:
    ran: list[int] = []

    @registry.tool(read_only=True)
    def add(a: int, b: int) -> int:
        ran.append(1)
        return a + b

    results = await registry.execute([call, openai("ok", "add", {"a": 1, "b": 1})])
    bad, good = results
    assert bad.status is Status.ERROR
    assert bad.error is not None
    assert bad.error.type == kind
    assert fragment in bad.error.message
    assert bad.started_at is None
    assert good.status is Status.OK
    assert ran == [1]  # only the good call ran


async def test_duplicate_ids_are_errors_for_every_call_sharing_them(
    registry: corral.ToolRegistry,
) -> None:
    ran: list[int] = []

    @registry.tool(read_only=True)
    def one(n: int) -> int:
        ran.append(n)
        return n

    results = await registry.execute(
        [
            ToolCall("x", "one", {"n": 1}),
            ToolCall("y", "one", {"n": 2}),
            ToolCall("x", "one", {"n": 3}),
        ]
    )
    assert [r.status for r in results] == [Status.ERROR, Status.OK, Status.ERROR]
    assert results[0].error is not None
    assert "call id 'x' is used by 2 calls (positions 0, 2)" in results[0].error.message
    assert ran == [2]


@pytest.mark.parametrize(
    ("calls", "fragment"),
    [
        ("not a list", "must be a list of calls"),
        ([42], "tool call #0 is a int"),
        ([{"id": "c1", "type": "function"}], "has no 'function' object"),
        ([{"id": "c1", "function": {"arguments": "{}"}}], "has no string 'name'"),
        ([{"type": "tool_use", "name": "add", "input": {}}], "has no string 'id'"),
        ([{"foo": "bar"}], "neither an OpenAI tool call nor an Anthropic tool_use block"),
    ],
)
async def test_malformed_call_structures_raise_usage_errors(
    reg: corral.ToolRegistry, calls: Any, fragment: str
) -> None:
    with pytest.raises(corral.UsageError, match=re.escape(fragment)):
        await reg.execute(calls)


def test_tool_call_validates_mode_and_normalises_depends_on() -> None:
    assert ToolCall("a", "t", depends_on="b").depends_on == ("b",)  # type: ignore[arg-type]
    assert ToolCall("a", "t", depends_on=["b", "c"]).depends_on == ("b", "c")  # type: ignore[arg-type]
    with pytest.raises(corral.UsageError, match="mode of call 'a' must be one of"):
        ToolCall("a", "t", mode="fast")  # type: ignore[arg-type]
