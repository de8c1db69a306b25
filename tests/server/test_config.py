"""corral.toml: agents with their providers and tools; errors name the file, line and value."""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from corral.errors import UsageError
from corral.server import ConfigError, Runtime, load_config, load_server_settings
from tests.server.conftest import MakeSettings, started
from tests.server.helpers import parse_sse
from tests.servers import free_port

SSE = {"accept": "text/event-stream"}


@pytest.fixture(autouse=True)
def _own_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # load_config puts the config's directory on sys.path; keep that to this test.
    monkeypatch.setattr(sys, "path", list(sys.path))


def write(tmp_path: Path, text: str, name: str = "corral.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def line_of(path: Path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def tools_module(tmp_path: Path) -> str:
    name = f"corral_test_tools_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            '''
            import corral

            registry = corral.ToolRegistry()

            @registry.tool(read_only=True)
            def shout(text: str) -> str:
                """Say it louder."""
                return text.upper()

            def calculate(expression: str) -> str:
                """Pretend to calculate."""
                return f"configured tool got {expression}"

            class Inventory:
                def count(self, item: str) -> int:
                    """Count an item."""
                    return len(item)

            not_a_tool = 42
            '''
        )
    )
    return name


async def test_agents_from_a_config_file(tmp_path: Path, make_settings: MakeSettings) -> None:
    module = tools_module(tmp_path)
    path = write(
        tmp_path,
        f"""
        [server]
        shutdown_grace_s = 3

        [provider]
        provider = "scripted"

        [agents.helper]
        description = "Counts things."
        system = "You are terse."
        max_steps = 4
        policy = "enqueue"
        tools = ["{module}:registry", "{module}:calculate", "{module}:Inventory"]

        [agents.files]
        demo_tools = true
        """,
    )
    config = load_config(path)
    settings = load_server_settings(dict(config.server), data_dir=tmp_path / "data")
    assert settings.shutdown_grace_s == 3
    async with started(settings.model_copy(update={"gc_freeze": False}), config=config) as running:
        async with running.client() as client:
            agents = {a["name"]: a for a in (await client.get("/agents")).json()}
            assert set(agents) == {"helper", "files"}
            helper = agents["helper"]
            assert helper["description"] == "Counts things."
            assert helper["policy"] == "enqueue"
            assert helper["max_steps"] == 4
            assert helper["provider"] == "scripted"
            assert helper["tools"] == ["shout", "calculate", "Inventory-count"]
            assert agents["files"]["tools"] == [
                "read_file",
                "write_file",
                "list_dir",
                "fetch",
                "calculate",
            ]
            assert (await client.get("/agents/helper")).json() == helper
            assert (await client.get("/agents/nobody")).status_code == 404

            tools = {
                t["name"]: t
                for t in (await client.get("/tools", params={"agent": "helper"})).json()
            }
            assert tools["shout"]["read_only"] is True
            assert tools["shout"]["parameters"]["properties"]["text"]["type"] == "string"
            every = (await client.get("/tools")).json()
            assert [t["agents"] for t in every if t["name"] == "calculate"] == [
                ["helper"],
                ["files"],
            ]

            session = (await client.post("/sessions", json={"agent": "helper"})).json()
            assert session["agent"] == "helper"
            assert session["policy"] == "enqueue"
            response = await client.post(
                f"/sessions/{session['id']}/messages",
                json={"message": "calculate 2*3"},
                headers=SSE,
            )
            events = parse_sse(response.text)
            result = next(e["result"] for e in events if e["event"] == "tool_call_finished")
            assert result["content"] == "configured tool got 2*3"


async def test_no_config_serves_the_demo_agent(make_settings: MakeSettings) -> None:
    async with started(make_settings()) as running:
        async with running.client() as client:
            (agent,) = (await client.get("/agents")).json()
            assert agent["name"] == "demo"
            assert agent["provider"].startswith("scripted")
            tools = (await client.get("/tools")).json()
            assert [t["name"] for t in tools] == [
                "read_file",
                "write_file",
                "list_dir",
                "fetch",
                "calculate",
            ]
            assert tools[1]["parameters"]["required"] == ["path", "text"]


@pytest.mark.parametrize(
    ("text", "needle", "expected"),
    [
        (
            """
            [agents.helper]
            max_steps = 0
            """,
            "max_steps",
            ["agents.helper.max_steps = 0", "greater than or equal to 1"],
        ),
        (
            """
            [agents.helper]
            system = "hi"
            colour = "red"
            """,
            "colour",
            ["agents.helper.colour = 'red'", "Extra inputs"],
        ),
        (
            """
            [agents.helper]
            policy = "sometimes"
            """,
            "policy",
            ["agents.helper.policy = 'sometimes'"],
        ),
        (
            """
            [agents.helper]
            tools = [
                "json:dumps",
                "no_such_module_here:fn",
            ]
            """,
            "no_such_module_here",
            ["agents.helper.tools[1] = 'no_such_module_here:fn'", "cannot import"],
        ),
        (
            """
            [agents.helper]
            tools = ["json:no_such_function"]
            """,
            "tools",
            ["'json:no_such_function'", "has no attribute 'no_such_function'"],
        ),
        (
            """
            [agents.helper]
            tools = ["not a reference"]
            """,
            "tools",
            ["'not a reference'", "package.module:attribute"],
        ),
        (
            """
            [agents.helper]
            api_key = "sk-123"
            """,
            "api_key",
            ["must not hold secrets"],
        ),
        (
            """
            [agents.helper]
            provider = "openai"
            api_key_env = "CORRAL_TEST_UNSET_KEY_VARIABLE"
            """,
            "api_key_env",
            ["CORRAL_TEST_UNSET_KEY_VARIABLE", "is not set"],
        ),
        (
            """
            [agents.helper]
            system = "x"

            [[agents.helper.mcp]]
            target = "python a.py"

            [[agents.helper.mcp]]  # the second one, without a target
            namespace = "b"
            """,
            "the second one",
            ["agents.helper.mcp[1].target", "Field required"],
        ),
        (
            """
            [agents."bad name!"]
            system = "x"
            """,
            "bad name",
            ["bad name!"],
        ),
        (
            """
            [agents.helper
            system = "x"
            """,
            "[agents.helper",
            ["not valid TOML"],
        ),
    ],
)
def test_config_errors_name_file_line_and_value(
    tmp_path: Path, text: str, needle: str, expected: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert f"{path}:{line_of(path, needle)}" in message, message
    for part in expected:
        assert part in message, message


def test_server_table_errors_name_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [server]
        host = "127.0.0.1"
        port = "eighty"
        """,
    )
    config = load_config(path)
    with pytest.raises(UsageError) as caught:
        load_server_settings(dict(config.server), locate=lambda key: config.where("server", key))
    assert f"{path}:3: [server] port = 'eighty'" in str(caught.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "nope.toml")


async def test_unreachable_remote_tools_fail_start_up_cleanly(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    path = write(
        tmp_path,
        f"""
        [agents.shop]
        demo_tools = true

        [[agents.shop.openapi]]
        spec = "http://127.0.0.1:{free_port()}/openapi.json"
        namespace = "shop"
        """,
    )
    runtime = Runtime(make_settings(), load_config(path))
    with pytest.raises(ConfigError) as caught:
        await runtime.start()
    assert f"{path}:{line_of(path, 'spec')}" in str(caught.value)
    assert "agents.shop.openapi[0].spec" in str(caught.value)
    # Nothing was left open: the store, the manager and the registries are closed.
    await runtime.aclose()


async def test_openapi_tools_from_the_config(tmp_path: Path, make_settings: MakeSettings) -> None:
    from tests.openapi_service import make_app
    from tests.servers import running_asgi

    service, _ = make_app()
    async with running_asgi(service) as base_url:
        path = write(
            tmp_path,
            f"""
            [agents.shop]
            description = "Knows the shop's API."

            [[agents.shop.openapi]]
            spec = "{base_url}/openapi.json"
            namespace = "shop"
            """,
        )
        async with started(make_settings(), config=load_config(path)) as running:
            async with running.client() as client:
                (agent,) = (await client.get("/agents")).json()
                assert agent["tools"]
                assert all(name.startswith("shop-") for name in agent["tools"])
                tools = (await client.get("/tools")).json()
                assert {t["name"] for t in tools} == set(agent["tools"])


async def test_agent_on_an_openai_compatible_server(
    tmp_path: Path, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fake_llm import FakeOpenAI
    from tests.fake_llm import Reply as FakeReply

    monkeypatch.setenv("CORRAL_TEST_LLM_KEY", "sk-test")
    fake = FakeOpenAI(default=FakeReply(text="hello from the fake model"))
    async with fake.serve() as base_url:
        path = write(
            tmp_path,
            f"""
            [provider]
            provider = "openai"
            base_url = "{base_url}"
            api_key_env = "CORRAL_TEST_LLM_KEY"

            [agents.chat]
            model = "gpt-4o-mini"
            system = "Be brief."
            """,
        )
        async with started(make_settings(), config=load_config(path)) as running:
            async with running.client() as client:
                (agent,) = (await client.get("/agents")).json()
                assert agent["provider"] == f"openai model 'gpt-4o-mini' at {base_url}"
                sid = (await client.post("/sessions", json={})).json()["id"]
                response = await client.post(
                    f"/sessions/{sid}/messages", json={"message": "hi"}, headers=SSE
                )
                events = parse_sse(response.text)
                assert events[-1]["result"]["text"] == "hello from the fake model"
    (arrival,) = fake.arrivals
    assert arrival.body["model"] == "gpt-4o-mini"  # the route prefix never leaves corral
    assert arrival.body["messages"][0] == {"role": "system", "content": "Be brief."}


async def test_a_model_calls_a_configured_openapi_service_end_to_end(
    tmp_path: Path, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """corral.toml names a real OpenAPI service and a model on the wire; a turn uses both.

    The model asks for a write and a read of the same item in one message: the scheduler keeps
    them in the order emitted (PUT then GET on /items/7), the service sees both, and the results
    go back to the model in its next request.
    """
    from tests.fake_llm import Call, FakeOpenAI
    from tests.fake_llm import Reply as FakeReply
    from tests.openapi_service import make_app
    from tests.servers import running_asgi

    monkeypatch.setenv("CORRAL_TEST_LLM_KEY", "sk-test")
    service, state = make_app()
    fake = FakeOpenAI()
    fake.add(
        FakeReply(
            calls=[
                Call("shop-put_item", '{"item_id": 7, "name": "lamp", "price": 12.5}', id="c1"),
                Call("shop-get_item", '{"item_id": 7, "verbose": true}', id="c2"),
            ]
        ),
        FakeReply(text="The lamp costs 12.5."),
    )
    async with running_asgi(service) as service_url, fake.serve() as model_url:
        path = write(
            tmp_path,
            f"""
            [provider]
            provider = "openai"
            base_url = "{model_url}"
            api_key_env = "CORRAL_TEST_LLM_KEY"

            [agents.shop]
            model = "gpt-4o-mini"
            system = "You run the shop."

            [[agents.shop.openapi]]
            spec = "{service_url}/openapi.json"
            namespace = "shop"
            """,
        )
        async with started(make_settings(), config=load_config(path)) as running:
            async with running.client() as client:
                sid = (await client.post("/sessions", json={"agent": "shop"})).json()["id"]
                response = await client.post(
                    f"/sessions/{sid}/messages", json={"message": "price the lamp"}, headers=SSE
                )
                assert response.status_code == 200, response.text
                events = parse_sse(response.text)
                history = (await client.get(f"/sessions/{sid}/messages")).json()

    finished = [e["result"] for e in events if e["event"] == "tool_call_finished"]
    assert {r["name"]: r["status"] for r in finished} == {
        "shop-put_item": "ok",
        "shop-get_item": "ok",
    }
    # The service saw the write before the read of the same path, each exactly once.
    assert state.hits["PUT /items/7"] == 1
    assert state.hits["GET /items/7"] == 1
    assert state.arrivals["PUT /items/7"][0] < state.arrivals["GET /items/7"][0]
    assert state.items[7] == {"name": "lamp", "price": 12.5, "tags": []}
    assert events[-1]["event"] == "done"
    assert events[-1]["result"]["text"] == "The lamp costs 12.5."
    # The model's second request carried both results, the read showing the written item.
    first, second = fake.bodies
    assert {t["function"]["name"] for t in first["tools"]} >= {"shop-put_item", "shop-get_item"}
    tool_messages = {m["tool_call_id"]: m for m in second["messages"] if m["role"] == "tool"}
    assert set(tool_messages) == {"c1", "c2"}
    read = json.loads(tool_messages["c2"]["content"])
    assert read == {"id": 7, "name": "lamp", "price": 12.5, "tags": [], "verbose": True, "q": None}
    # And the turn was stored: user, the assistant's calls, both results, the answer.
    assert [m["seq"] for m in history] == [1, 2, 3, 4, 5]
    assert [m["message"]["role"] for m in history] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
    ]
