from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import pytest

import corral
from corral import ToolCall, ToolContext
from corral.scheduler import EXCLUSIVE_RESOURCE, Claim
from tests import support


def test_schema_from_hints_and_docstring() -> None:
    reg = corral.ToolRegistry()

    @reg.tool(read_only=True)
    def search(query: str, limit: int = 10, kind: Literal["web", "news"] = "web") -> list[str]:
        """Search the web.

        Results come back newest first.

        Args:
            query: What to look for.
            limit: How many results at most.
            kind: Which index to search.
        """
        return []

    (openai,) = reg.schemas("openai")
    assert openai["type"] == "function"
    fn = openai["function"]
    assert fn["name"] == "search"
    assert fn["description"] == "Search the web.\n\nResults come back newest first."
    params = fn["parameters"]
    assert params["required"] == ["query"]
    assert params["additionalProperties"] is False
    assert params["properties"]["query"] == {"type": "string", "description": "What to look for."}
    assert params["properties"]["limit"]["default"] == 10
    assert params["properties"]["kind"]["enum"] == ["web", "news"]
    (anthropic,) = reg.schemas("anthropic")
    assert anthropic == {
        "name": "search",
        "description": fn["description"],
        "input_schema": params,
    }
    with pytest.raises(corral.UsageError, match="format must be 'openai' or 'anthropic'"):
        reg.schemas("gemini")  # type: ignore[arg-type]


def test_nested_pydantic_models_validate_and_stay_objects() -> None:
    class Point(pydantic.BaseModel):
        x: int
        y: int

    reg = corral.ToolRegistry()
    seen: list[Any] = []

    @reg.tool(read_only=True)
    def norm(p: Point) -> int:
        seen.append(p)
        return abs(p.x) + abs(p.y)

    (schema,) = reg.schemas()
    assert "$defs" in schema["function"]["parameters"]
    results = reg.execute_sync([ToolCall("c1", "norm", {"p": {"x": 3, "y": "-4"}})])
    reg.close()
    assert results[0].value == 7
    assert isinstance(seen[0], Point)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "has space"}, "tool name 'has space' is not valid"),
        ({"name": "x" * 65}, "is not valid: use 1 to 64"),
        ({"mode": "gpu"}, "mode of tool 'f' must be one of 'async', 'thread', 'process'"),
        ({"timeout": 0}, "timeout of tool 'f' must be a positive number"),
        ({"limit": 0}, "limit of tool 'f' must be a positive integer or a budget name"),
        ({"read_only": True, "writes": "file:{a}"}, "is read_only but declares writes"),
        ({"writes": "file:{nope}"}, "names 'nope', which is not a parameter (parameters: a)"),
        ({"writes": "no-scheme"}, "must look like 'scheme:{param}'"),
        ({"reads": "file:{a"}, "resource template 'file:{a' of tool 'f'"),
    ],
)
def test_bad_registrations_name_the_bad_value(kwargs: dict[str, Any], fragment: str) -> None:
    def f(a: str) -> str:
        return a

    with pytest.raises(corral.UsageError, match=re.escape(fragment)):
        corral.ToolRegistry().register(f, **kwargs)


def test_bad_signatures_are_refused() -> None:
    reg = corral.ToolRegistry()

    def variadic(*args: int) -> None: ...

    def positional(a: int, /) -> None: ...

    with pytest.raises(corral.UsageError, match="parameter 'args' is variadic"):
        reg.register(variadic)
    with pytest.raises(corral.UsageError, match="parameter 'a' is positional-only"):
        reg.register(positional)
    with pytest.raises(corral.UsageError, match="a tool must be callable"):
        reg.register(42)  # type: ignore[arg-type]


def test_duplicate_names_and_unregister() -> None:
    reg = corral.ToolRegistry()
    reg.register(support.add)
    with pytest.raises(corral.UsageError, match="tool 'add' is already registered"):
        reg.register(support.add)
    reg.register(support.add, name="add2")
    assert "add" in reg
    assert len(reg) == 2
    assert [t.name for t in reg] == ["add", "add2"]
    reg.unregister("add")
    assert "add" not in reg
    with pytest.raises(corral.UsageError, match="tool 'add' is not registered"):
        reg.unregister("add")
    with pytest.raises(corral.UsageError, match="tool 'nope' is not registered"):
        reg.get("nope")


class Calc:
    """A calculator with state, to show methods stay bound to one instance."""

    def __init__(self) -> None:
        self.calls = 0

    def add(self, a: int, b: int) -> int:
        """Add two integers."""
        self.calls += 1
        return a + b

    @corral.tool(read_only=True, timeout=5)
    def peek(self) -> int:
        """Return how many additions ran."""
        return self.calls

    @staticmethod
    def neg(a: int) -> int:
        """Negate a number."""
        return -a

    def _private(self) -> None: ...

    @property
    def total(self) -> int:
        return self.calls


def test_register_class_exposes_public_methods() -> None:
    reg = corral.ToolRegistry()
    tools = reg.register_class(Calc, namespace="Calc")
    assert [t.name for t in tools] == ["Calc-add", "Calc-peek", "Calc-neg"]
    peek = reg.get("Calc-peek")
    assert peek.read_only
    assert peek.timeout_s == 5
    assert not reg.get("Calc-add").read_only
    results = reg.execute_sync(
        [
            ToolCall("a", "Calc-add", {"a": 1, "b": 2}),
            ToolCall("n", "Calc-neg", {"a": 5}),
            ToolCall("p", "Calc-peek", {}, depends_on=("a",)),
        ]
    )
    reg.close()
    assert [r.value for r in results] == [3, -5, 1]


def test_register_class_with_instance_and_errors() -> None:
    class NeedsArgs:
        def __init__(self, base: int) -> None:
            self.base = base

        def plus(self, n: int) -> int:
            return self.base + n

    reg = corral.ToolRegistry()
    with pytest.raises(corral.UsageError, match="needs an instance"):
        reg.register_class(NeedsArgs)
    (tool,) = reg.register_class(NeedsArgs(10))
    assert tool.name == "NeedsArgs-plus"
    with pytest.raises(corral.UsageError, match="already registered"):
        reg.register_class(NeedsArgs(1))

    class Empty:
        pass

    with pytest.raises(corral.UsageError, match="has no public methods"):
        reg.register_class(Empty)


def test_path_parameters_are_detected_and_claimed(tmp_path: Path) -> None:
    reg = corral.ToolRegistry(cwd=tmp_path)

    def write(path: Path, text: str) -> None: ...

    def read(path: Path | None = None) -> None: ...

    def many(paths: list[Path]) -> None: ...

    reg.register(write)
    reg.register(read, read_only=True)
    reg.register(many, read_only=True)
    plan = reg.plan(
        [
            ToolCall("w", "write", {"path": "sub/../a.txt", "text": ""}),
            ToolCall("r", "read", {"path": str(tmp_path / "a.txt")}),
            ToolCall("n", "read", {}),
            ToolCall("m", "many", {"paths": ["x", "~/y"]}),
        ]
    )
    root = str(tmp_path)
    assert plan.claims[0] == (Claim(f"file:{root}/a.txt", write=True),)
    assert plan.claims[1] == (Claim(f"file:{root}/a.txt", write=False),)
    assert plan.claims[2] == ()
    assert plan.claims[3] == (
        Claim(f"file:{root}/x", write=False),
        Claim(f"file:{Path.home()}/y", write=False),
    )
    assert [(plan.ids[e.before], plan.ids[e.after]) for e in plan.edges] == [("w", "r")]


def test_tools_receive_normalised_absolute_paths(tmp_path: Path) -> None:
    reg = corral.ToolRegistry(cwd=tmp_path)
    got: list[Path] = []

    @reg.tool(read_only=True)
    def where(path: Path) -> str:
        got.append(path)
        return str(path)

    reg.execute_sync([ToolCall("c", "where", {"path": "a/../b/c.txt"})], cwd="sub")
    reg.close()
    assert got == [tmp_path / "sub" / "b" / "c.txt"]


def test_resource_templates_expand_lists_and_skip_none() -> None:
    reg = corral.ToolRegistry()

    def tag(keys: list[str], scope: str | None = None) -> None: ...

    reg.register(tag, writes=["memory:{keys}", "scope:{scope}"], reads="index:{keys!s:>3}")
    plan = reg.plan(
        [
            ToolCall("a", "tag", {"keys": ["k1", "k2"]}),
            ToolCall("b", "tag", {"keys": ["k2"], "scope": "s"}),
        ]
    )
    assert set(plan.claims[0]) == {
        Claim("memory:k1", True),
        Claim("memory:k2", True),
        Claim("index: k1", False),
        Claim("index: k2", False),
    }
    assert Claim("scope:s", True) in plan.claims[1]
    assert [(e.before, e.after, e.resource) for e in plan.edges] == [(0, 1, "memory:k2")] or [
        (e.before, e.after) for e in plan.edges
    ] == [(0, 1)]


def test_undeclared_tools_claim_the_exclusive_resource() -> None:
    def tool(x: int) -> int:
        return x

    declared = corral.ToolRegistry()
    declared.register(tool)
    assert declared.plan([ToolCall("a", "tool", {"x": 1})]).claims[0] == (
        Claim(EXCLUSIVE_RESOURCE, True),
    )
    independent = corral.ToolRegistry(assume="independent")
    independent.register(tool)
    assert independent.plan([ToolCall("a", "tool", {"x": 1})]).claims[0] == ()
    with pytest.raises(corral.UsageError, match="assume must be"):
        corral.ToolRegistry(assume="yolo")  # type: ignore[arg-type]
    with pytest.raises(corral.UsageError, match="mode must be one of"):
        corral.ToolRegistry(mode="fast")  # type: ignore[arg-type]


async def test_tool_context_is_injected_and_hidden_from_the_schema(
    registry: corral.ToolRegistry, tmp_path: Path
) -> None:
    seen: list[ToolContext] = []

    @registry.tool(read_only=True)
    async def whoami(greeting: str, ctx: ToolContext) -> str:
        seen.append(ctx)
        return f"{greeting} {ctx.extras['user']}"

    (schema,) = registry.schemas()
    assert list(schema["function"]["parameters"]["properties"]) == ["greeting"]
    results = await registry.execute(
        [ToolCall("c9", "whoami", {"greeting": "hi"})], cwd=tmp_path, context={"user": "ada"}
    )
    assert results[0].value == "hi ada"
    assert seen[0].call_id == "c9"
    assert seen[0].tool == "whoami"
    assert seen[0].cwd == tmp_path


async def test_mode_resolution(registry: corral.ToolRegistry) -> None:
    registry.register(support.add, read_only=True)
    registry.register(support.async_sleep_ms, read_only=True)
    registry.register(support.pid, read_only=True, mode="process")

    def modes(results: corral.ToolResults) -> list[str | None]:
        return [r.mode for r in results]

    calls = [
        ToolCall("a", "add", {"a": 1, "b": 2}),
        ToolCall("s", "async_sleep_ms", {"ms": 0}),
        ToolCall("p", "pid", {}),
    ]
    assert modes(await registry.execute(calls)) == ["thread", "async", "process"]
    assert modes(await registry.execute(calls, mode="thread")) == ["thread"] * 3
    per_call = [ToolCall("a", "add", {"a": 1, "b": 2}, mode="async"), calls[2]]
    assert modes(await registry.execute(per_call, mode="thread")) == ["async", "thread"]


async def test_registry_mode_overrides_auto_but_not_a_tools_own_mode() -> None:
    async with corral.ToolRegistry(mode="async") as reg:
        reg.register(support.add, read_only=True)
        reg.register(support.pid, read_only=True, mode="thread")
        results = await reg.execute(
            [ToolCall("a", "add", {"a": 1, "b": 2}), ToolCall("p", "pid", {})]
        )
        assert [r.mode for r in results] == ["async", "thread"]


def test_execute_sync_runs_on_a_portal_and_refuses_inside_a_loop() -> None:
    import asyncio

    reg = corral.ToolRegistry()
    reg.register(support.add, read_only=True)
    results = reg.execute_sync([ToolCall("a", "add", {"a": 1, "b": 2})])
    assert results[0].value == 3

    async def inside() -> None:
        with pytest.raises(corral.UsageError, match="execute_sync\\(\\) was called from a running"):
            reg.execute_sync([ToolCall("a", "add", {"a": 1, "b": 2})])
        # An async caller on another loop is proxied to the registry's loop.
        again = await reg.execute([ToolCall("b", "add", {"a": 2, "b": 2})])
        assert again[0].value == 4

    asyncio.run(inside())
    reg.close()
    reg.close()  # idempotent
    with pytest.raises(corral.ClosedError, match="the tool registry is closed"):
        reg.execute_sync([ToolCall("a", "add", {"a": 1, "b": 2})])


async def test_use_after_close_names_the_state() -> None:
    reg = corral.ToolRegistry()
    reg.register(support.add, read_only=True)
    await reg.aclose()
    await reg.aclose()  # idempotent
    with pytest.raises(corral.ClosedError, match="the tool registry is closed"):
        await reg.execute([ToolCall("a", "add", {"a": 1, "b": 2})])
    with pytest.raises(corral.ClosedError, match="closed"):
        reg.register(support.divide)


async def test_named_budget_must_be_sized(registry: corral.ToolRegistry) -> None:
    registry.register(support.add, read_only=True, limit="api")
    with pytest.raises(corral.UsageError, match="uses budget 'api', which has no size"):
        await registry.execute([ToolCall("a", "add", {"a": 1, "b": 2})])
    registry.set_limit("api", 2)
    results = await registry.execute([ToolCall("a", "add", {"a": 1, "b": 2})])
    assert results[0].value == 3
    assert registry.statistics().budgets["api"].limit == 2


async def test_closures_travel_by_value_to_process_workers(
    registry: corral.ToolRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    offset = 100

    def shifted(n: int) -> int:
        return n + offset

    registry.register(shifted, read_only=True, mode="process")
    with caplog.at_level(logging.DEBUG, logger="corral.executors.base"):
        results = await registry.execute([ToolCall(f"c{i}", "shifted", {"n": i}) for i in range(4)])
    assert [r.value for r in results] == [100, 101, 102, 103]
    assert "travels by value (cloudpickle)" in caplog.text


def test_annotated_and_optional_types_in_schema() -> None:
    reg = corral.ToolRegistry()

    @reg.tool(read_only=True)
    def f(
        a: Annotated[int, pydantic.Field(ge=0, description="non-negative")], b: str | None = None
    ) -> None:
        pass

    params = reg.schemas()[0]["function"]["parameters"]
    assert params["properties"]["a"]["minimum"] == 0
    assert params["properties"]["a"]["description"] == "non-negative"
    assert params["required"] == ["a"]
    results = reg.execute_sync([ToolCall("c", "f", {"a": -1})])
    reg.close()
    assert results[0].error is not None
    assert "a: Input should be greater than or equal to 0 (got -1)" in results[0].error.message


def test_parameter_names_that_basemodel_uses_still_work() -> None:
    reg = corral.ToolRegistry()

    @reg.tool(read_only=True)
    def clash(keys: list[str], json: str, model_name: str, copy: int = 1) -> str:
        return f"{keys}{json}{model_name}{copy}"

    results = reg.execute_sync(
        [ToolCall("c", "clash", {"keys": ["k"], "json": "j", "model_name": "m"})]
    )
    reg.close()
    assert results[0].value == "['k']jm1"


def test_str_parameters_in_file_templates_are_resolved_too(tmp_path: Path) -> None:
    reg = corral.ToolRegistry(cwd=tmp_path)
    got: dict[str, object] = {}

    @reg.tool(writes="file:{name}", reads="memory:{key}")
    def save(name: str, key: str, names: list[str] | None = None) -> None:
        got["save"] = (name, key)

    @reg.tool(read_only=True, reads="file:{names}")
    def load(names: list[str]) -> None:
        got["load"] = names

    reg.execute_sync(
        [
            ToolCall("s", "save", {"name": "a/../b.txt", "key": "k"}),
            ToolCall("l", "load", {"names": ["x", "/abs/y"]}),
        ]
    )
    reg.close()
    assert got["save"] == (f"{tmp_path}/b.txt", "k")  # memory keys are left alone
    assert got["load"] == [f"{tmp_path}/x", "/abs/y"]
    assert reg.get("save").path_params == ("name",)
