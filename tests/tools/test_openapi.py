"""OpenAPI tools against a real FastAPI service on 127.0.0.1 (tests/openapi_service.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

import corral
from corral import Status, ToolCall
from corral._deadline import current_deadline
from corral._retry import Backoff
from corral.errors import HTTPStatusError, RemoteConnectError
from corral.tools._openapi import OpenAPIService, OpenAPIStatistics, register_openapi
from tests.openapi_service import Barrier, ServiceState, make_app
from tests.servers import free_port, running_asgi

FAST = Backoff(attempts=3, base_s=0.001, max_s=5.0)


@dataclass
class Shop:
    url: str
    state: ServiceState
    reg: corral.ToolRegistry
    tools: list[corral.Tool]

    @property
    def service(self) -> OpenAPIService:
        return service_of(self.tools[0])


def service_of(tool: corral.Tool) -> OpenAPIService:
    service = getattr(tool.fn, "service", None)
    assert isinstance(service, OpenAPIService)
    return service


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, ServiceState]]:
    app, state = make_app()
    async with running_asgi(app) as url:
        try:
            yield url, state
        finally:
            state.release_slow.set()  # let a handler a timed-out call left behind finish


@pytest.fixture
async def shop(
    server: tuple[str, ServiceState], registry: corral.ToolRegistry
) -> AsyncIterator[Shop]:
    url, state = server
    tools = await register_openapi(registry, f"{url}/openapi.json", backoff=FAST)
    yield Shop(url, state, registry, tools)
    assert service_of(tools[0]).statistics().in_flight == 0


def error_of(result: corral.ToolResult) -> corral.ErrorInfo:
    assert result.status is Status.ERROR, result
    assert result.error is not None
    return result.error


async def run_one(reg: corral.ToolRegistry, tool: str, /, **arguments: Any) -> corral.ToolResult:
    (result,) = await reg.execute([ToolCall("c1", tool, arguments)])
    return result


# -- schemas -------------------------------------------------------------------------------------


async def test_schemas_map_path_query_and_a_flattened_ref_body(shop: Shop) -> None:
    names = [t.name for t in shop.tools]
    assert names[:4] == ["get_item", "put_item", "delete_item", "create_item"]
    get_item, put_item = shop.reg.get("get_item"), shop.reg.get("put_item")
    assert get_item.parameters == {
        "type": "object",
        "properties": {
            "item_id": {"type": "integer"},
            "verbose": {"type": "boolean", "default": False},
            "q": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["item_id"],
        "additionalProperties": False,
    }
    # The body is `$ref: #/components/schemas/Item`: resolved, and its properties flattened.
    assert put_item.parameters == {
        "type": "object",
        "properties": {
            "item_id": {"type": "integer"},
            "name": {"type": "string"},
            "price": {"type": "number"},
            "tags": {"items": {"type": "string"}, "type": "array", "default": []},
        },
        "required": ["item_id", "name", "price"],
        "additionalProperties": False,
    }
    assert get_item.description == "Fetch one item\n\nReturn the item, with its id."
    assert (get_item.read_only, put_item.read_only) == (True, False)
    assert (get_item.source, get_item.mode, get_item.process_capable) == ("openapi", "async", False)
    openai = {s["function"]["name"]: s["function"] for s in shop.reg.schemas("openai")}
    assert openai["put_item"]["parameters"] == put_item.parameters

    shop.state.items[7] = {"name": "lamp", "price": 3.5, "tags": []}
    result = await run_one(shop.reg, "get_item", item_id=7, verbose=True, q=None)
    assert result.status is Status.OK, result.error
    assert result.value == {
        "id": 7,
        "name": "lamp",
        "price": 3.5,
        "tags": [],
        "verbose": True,
        "q": None,
    }
    result = await run_one(shop.reg, "create_item", name="desk", price=120, dry_run=True)
    assert result.value == {"id": 1001, "dry_run": True, "name": "desk", "price": 120.0, "tags": []}


async def test_name_clashes_prefix_the_location_and_keep_the_body_whole(shop: Shop) -> None:
    put_thing = shop.reg.get("put_thing")
    assert put_thing.parameters["properties"] == {
        "id": {"type": "integer"},
        "query_id": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "body": {
            "type": "object",
            "description": "A body whose `id` clashes with the path parameter `id`: it cannot be "
            "flattened.",
            "properties": {
                "id": {"type": "integer", "title": "Id"},
                "label": {"type": "string", "title": "Label"},
            },
            "required": ["id", "label"],
        },
    }
    assert put_thing.parameters["required"] == ["id", "body"]
    result = await run_one(shop.reg, "put_thing", id=3, query_id=4, body={"id": 5, "label": "x"})
    assert result.value == {"path_id": 3, "query_id": 4, "body": {"id": 5, "label": "x"}}


async def test_headers_cookies_and_arrays_reach_the_server(
    server: tuple[str, ServiceState], registry: corral.ToolRegistry
) -> None:
    url, state = server
    await registry.register_openapi(
        f"{url}/openapi.json", headers={"X-Api-Key": "k1"}, namespace="shop"
    )
    assert "shop-search" in registry
    arguments = {"q": "lamp", "x-trace": "t-1", "session": "s-1", "tag": ["a", "b"], "limit": 5}
    result = await run_one(registry, "shop-search", **arguments)
    assert result.value == {
        "q": "lamp",
        "trace": "t-1",
        "session": "s-1",
        "limit": 5,
        "tag": ["a", "b"],
    }
    assert state.headers[-1]["x-api-key"] == "k1"


SPEC_30 = """\
openapi: 3.0.3
info: {title: Tree, version: "1"}
servers:
  - url: "{base}"
paths:
  /items/{item_id}:
    parameters:
      - $ref: '#/components/parameters/ItemId'
      - {name: verbose, in: query, description: from the path level, schema: {type: boolean}}
    get:
      summary: Read an item
      parameters:
        - {name: verbose, in: query, description: from the operation, schema: {type: boolean}}
        - {name: Authorization, in: header, schema: {type: string}}
        - {name: q, in: query, schema: {type: string, nullable: true}}
      responses: {"200": {description: the item}}
  /nodes:
    post:
      operationId: add node!
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: '#/components/schemas/Node'}
      responses: {"201": {description: added}}
components:
  parameters:
    ItemId:
      name: item_id
      in: path
      required: true
      schema: {type: integer, minimum: 0, exclusiveMinimum: true}
  schemas:
    Node:
      type: object
      required: [id, name]
      additionalProperties: false
      properties:
        id: {type: integer, readOnly: true}
        name: {type: string}
        note: {type: string, nullable: true}
        kind: {type: string, enum: [leaf, branch], nullable: true}
        children: {type: array, items: {$ref: '#/components/schemas/Node'}}
        meta: {$ref: '#/components/schemas/a~1b'}
    a/b:
      type: object
      properties:
        tilde: {$ref: '#/components/schemas/c~0d'}
    c~d: {type: integer}
"""


async def test_a_30_yaml_file_with_nullable_recursion_escapes_and_no_operation_id(
    server: tuple[str, ServiceState], registry: corral.ToolRegistry, tmp_path: Path
) -> None:
    url, state = server
    path = tmp_path / "tree.yaml"
    path.write_text(SPEC_30.replace("{base}", url))
    tools = await register_openapi(registry, path)
    assert [t.name for t in tools] == ["get_items_item_id", "add_node_"]
    get, add = tools
    assert get.description == "Read an item"
    assert get.parameters["properties"] == {
        "item_id": {"type": "integer", "minimum": 0, "exclusiveMinimum": True},
        "verbose": {"type": "boolean", "description": "from the operation"},
        "q": {"type": ["string", "null"]},  # the Authorization header parameter is ignored
    }
    node = add.parameters["properties"]
    assert list(node) == ["name", "note", "kind", "children", "meta"]  # `id` is read-only
    assert node["note"] == {"type": ["string", "null"]}
    assert node["kind"] == {"type": ["string", "null"], "enum": ["leaf", "branch", None]}
    assert node["meta"] == {"type": "object", "properties": {"tilde": {"type": "integer"}}}
    assert node["children"] == {
        "type": "array",
        "items": {"description": "a Node (recursive: same shape as the enclosing Node)"},
    }
    assert add.parameters["required"] == ["name"]

    add.validate({"name": "n", "note": None, "kind": None, "children": [{"name": "c"}]})
    with pytest.raises(corral.ToolArgumentsInvalid) as caught:
        add.validate({"name": 1, "kind": "tree", "meta": {"tilde": "x"}, "extra": 0})
    message = str(caught.value)
    for bad in ("extra: unexpected argument", "kind:", "meta.tilde:", "name: 1 is not of type"):
        assert bad in message
    with pytest.raises(corral.ToolArgumentsInvalid, match="item_id: 0 is less than or equal"):
        get.validate({"item_id": 0})  # Draft 4: a boolean exclusiveMinimum

    state.items[5] = {"name": "tree", "price": 1.0}
    result = await run_one(registry, "get_items_item_id", item_id=5, q=None)
    assert result.value == {"id": 5, "name": "tree", "price": 1.0, "verbose": False, "q": None}


# -- scheduling ----------------------------------------------------------------------------------


async def test_writes_to_one_item_keep_order_while_reads_of_others_overlap(shop: Shop) -> None:
    shop.state.items.update({8: {"name": "a", "price": 1.0}, 9: {"name": "b", "price": 2.0}})
    # Each read waits at the server until both reads are in flight; the first write waits for
    # them too, so had the second write been sent beside it, the server would have seen both.
    shop.state.read_barrier = Barrier(parties=2)
    calls = [
        ToolCall("w1", "put_item", {"item_id": 7, "name": "first", "price": 1}),
        ToolCall("w2", "put_item", {"item_id": 7, "name": "second", "price": 2}),
        ToolCall("r8", "get_item", {"item_id": 8}),
        ToolCall("r9", "get_item", {"item_id": 9}),
    ]
    results = await shop.reg.execute(calls)
    assert [r.status for r in results] == [Status.OK] * 4, [r.error for r in results]
    assert shop.state.max_writes_in_flight == 1
    writes = [e for e in shop.state.events if e.startswith("put")]
    assert writes == ["put first start", "put first end", "put second start", "put second end"]
    assert shop.state.items[7]["name"] == "second"
    assert results.plan is not None
    assert [(e.before, e.after) for e in results.plan.edges] == [(0, 1)]


def test_claims_follow_method_and_concrete_path(shop: Shop) -> None:
    host = shop.url.removeprefix("http://")
    plan = shop.reg.plan(
        [
            ToolCall("a", "get_item", {"item_id": 7}),
            ToolCall("b", "get_item", {"item_id": 8}),
            ToolCall("c", "create_item", {"name": "n", "price": 1}),
            ToolCall("d", "delete_item", {"item_id": 8}),
        ]
    )
    assert plan.claims[0] == (corral.scheduler.Claim(f"url:/{host}/items/7", write=False),)
    assert plan.claims[2] == (corral.scheduler.Claim(f"url:/{host}/items", write=True),)
    # The reads of items 7 and 8 run at once; the POST writes the collection, so it waits for
    # them; the DELETE of item 8 waits for the read of item 8 and for the POST.
    assert sorted((e.before, e.after) for e in plan.edges) == [(0, 2), (1, 2), (1, 3), (2, 3)]


# -- errors and retries --------------------------------------------------------------------------


async def test_404_is_an_error_with_status_and_a_body_excerpt(shop: Shop) -> None:
    error = error_of(await run_one(shop.reg, "get_item", item_id=404))
    assert error.type == "HTTPStatusError"
    prefix = f"GET {shop.url}/items/404 returned 404 Not Found: "
    assert error.message.startswith(prefix + '{"detail":"item 404 not found"')
    assert error.message.endswith("...")
    assert len(error.message) == len(prefix) + 200 + 3
    with pytest.raises(HTTPStatusError) as caught:
        await shop.reg.get("get_item").fn(item_id=404)
    assert (caught.value.status, caught.value.retry_after_s) == (404, None)
    assert shop.state.hits["GET /items/404"] == 2  # a 404 is not retried


async def test_500_is_not_retried_but_502_and_503_are(shop: Shop) -> None:
    shop.state.fail_plan["a"] = [(500, {})]
    shop.state.fail_plan["b"] = [(502, {}), (503, {})]
    results = await shop.reg.execute(
        [ToolCall("a", "get_flaky", {"key": "a"}), ToolCall("b", "get_flaky", {"key": "b"})]
    )
    assert "returned 500 Internal Server Error" in error_of(results[0]).message
    assert results[1].status is Status.OK
    assert results[1].value == {"key": "b"}
    assert shop.state.hits["GET /flaky/a"] == 1
    assert shop.state.hits["GET /flaky/b"] == 3
    assert shop.service.statistics().retries == 2


async def test_429_is_retried_after_the_servers_retry_after(shop: Shop) -> None:
    shop.state.fail_plan["r"] = [(429, {"Retry-After": "1"})]
    result = await run_one(shop.reg, "get_flaky", key="r")
    assert result.status is Status.OK, result.error
    first, second = shop.state.arrivals["GET /flaky/r"]
    assert second - first >= 0.95  # the backoff alone would have waited about a millisecond


@pytest.mark.parametrize(
    ("retry_after", "deadline_s", "max_s"),
    [
        pytest.param("2", 0.5, 60.0, id="beyond-the-call-deadline"),
        pytest.param("30", None, 5.0, id="beyond-the-longest-backoff"),
    ],
)
async def test_a_retry_after_too_long_gives_up_at_once(
    server: tuple[str, ServiceState],
    registry: corral.ToolRegistry,
    retry_after: str,
    deadline_s: float | None,
    max_s: float,
) -> None:
    url, state = server
    backoff = Backoff(attempts=3, base_s=0.001, max_s=max_s)
    await register_openapi(registry, f"{url}/openapi.json", backoff=backoff)
    state.fail_plan["d"] = [(503, {"Retry-After": retry_after})]
    loop = asyncio.get_running_loop()
    token = current_deadline.set(None if deadline_s is None else loop.time() + deadline_s)
    started = loop.time()
    try:
        with pytest.raises(HTTPStatusError) as caught:
            await registry.get("get_flaky").fn(key="d")
    finally:
        current_deadline.reset(token)
    assert loop.time() - started < 1.5  # a retry would have waited at least 2 s
    assert caught.value.status == 503
    assert caught.value.retry_after_s == float(retry_after)
    assert f"(Retry-After: {retry_after} s)" in str(caught.value)
    assert state.hits["GET /flaky/d"] == 1


async def test_post_is_never_retried(shop: Shop) -> None:
    error = error_of(await run_one(shop.reg, "post_flaky", key="p"))
    assert error.message == (
        f"POST {shop.url}/flaky/p returned 503 Service Unavailable (Retry-After: 0 s): "
        '{"detail":"unavailable"}'
    )
    assert shop.state.hits["POST /flaky/p"] == 1
    assert shop.service.statistics().retries == 0


async def test_a_call_timeout_on_a_slow_endpoint_is_status_timeout(shop: Shop) -> None:
    (result,) = await shop.reg.execute([ToolCall("s", "slow", {}, timeout=0.2)])
    assert result.status is Status.TIMEOUT
    assert shop.state.hits["GET /slow"] == 1


async def test_the_http_timeout_is_a_remote_timeout_and_not_retried(
    server: tuple[str, ServiceState], registry: corral.ToolRegistry
) -> None:
    url, state = server
    await register_openapi(registry, f"{url}/openapi.json", timeout=0.2, backoff=FAST)
    error = error_of(await run_one(registry, "slow"))
    assert error.type == "RemoteTimeout"
    assert error.message == f"GET {url}/slow: no response within 0.2 s"
    assert state.hits["GET /slow"] == 1


MINIMAL = {
    "openapi": "3.1.0",
    "info": {"title": "t", "version": "1"},
    "paths": {
        "/items/{id}": {
            "get": {
                "operationId": "get_item",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
                ],
                "responses": {"200": {"description": "ok"}},
            }
        }
    },
}


async def test_a_refused_connection_is_a_remote_connect_error(
    registry: corral.ToolRegistry,
) -> None:
    port = free_port()
    tools = await register_openapi(
        registry, MINIMAL, base_url=f"http://127.0.0.1:{port}", backoff=FAST
    )
    error = error_of(await run_one(registry, "get_item", id=1))
    assert error.type == "RemoteConnectError"
    assert error.message.startswith(f"cannot connect to http://127.0.0.1:{port}/items/1: ")
    with pytest.raises(RemoteConnectError):
        await tools[0].fn(id=1)
    assert service_of(tools[0]).statistics().requests == 2 * FAST.attempts  # GET is retried


@asynccontextmanager
async def hanging_up_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A raw TCP server that reads each request's head and hangs up without answering."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", heads
    finally:
        server.close()
        await server.wait_closed()


async def test_a_broken_connection_retries_a_get_but_never_a_post(
    registry: corral.ToolRegistry,
) -> None:
    spec = json.loads(json.dumps(MINIMAL))
    spec["paths"]["/items"] = {
        "post": {
            "operationId": "create_item",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": {"201": {"description": "created"}},
        }
    }
    async with hanging_up_server() as (url, heads):
        await register_openapi(registry, spec, base_url=url, backoff=FAST)
        # One batch each: the POST writes the collection the GET reads, so in one batch a failed
        # GET would skip it.
        get_error = error_of(await run_one(registry, "get_item", id=1))
        post_error = error_of(await run_one(registry, "create_item", body={"name": "x"}))
    assert get_error.type == "RemoteConnectError"
    assert get_error.message.startswith(f"GET {url}/items/1: the connection broke (")
    assert post_error.type == "OutcomeUnknown"
    assert "it may or may not have taken effect, so it is not retried" in post_error.message
    methods = [head.split(b" ", 1)[0] for head in heads]
    # The POST was sent exactly once. The GET was tried FAST.attempts times by corral; the HTTP
    # client may also resend an idempotent request once on a kept-alive connection the server
    # had closed (RFC 9112, 9.3.1), never a POST.
    assert methods.count(b"POST") == 1
    assert FAST.attempts <= methods.count(b"GET") <= 2 * FAST.attempts


async def test_invalid_arguments_name_every_bad_one_and_never_reach_the_server(shop: Shop) -> None:
    results = await shop.reg.execute(
        [
            ToolCall("a", "get_item", {"item_id": "seven", "colour": "red"}),
            ToolCall("b", "put_item", {"item_id": 7, "name": "x", "tags": "one"}),
        ]
    )
    assert [r.status for r in results] == [Status.ERROR, Status.ERROR]
    assert [r.error.type for r in results if r.error] == ["ToolArgumentsInvalid"] * 2
    messages = [r.error.message for r in results if r.error]
    assert messages[0] == (
        "invalid arguments for tool 'get_item': colour: unexpected argument; "
        "item_id: 'seven' is not of type 'integer'"
    )
    assert messages[1] == (
        "invalid arguments for tool 'put_item': price: missing required argument; "
        "tags: 'one' is not of type 'array'"
    )
    assert not shop.state.hits


async def test_text_and_no_content_answers(shop: Shop) -> None:
    shop.state.items[3] = {"name": "x", "price": 1.0}
    results = await shop.reg.execute(
        [ToolCall("t", "text", {}), ToolCall("d", "delete_item", {"item_id": 3})]
    )
    assert [r.value for r in results] == ["plain hello", None]
    assert 3 not in shop.state.items


async def test_a_mode_override_cannot_move_a_remote_tool_off_the_event_loop(shop: Shop) -> None:
    assert (await run_one(shop.reg, "text")).value == "plain hello"
    modes: tuple[Literal["thread", "process"], ...] = ("thread", "process")
    for mode in modes:
        (result,) = await shop.reg.execute([ToolCall("t", "text", {}, mode=mode)])
        assert result.status is Status.OK
        assert result.mode == "async"
    assert shop.state.hits["GET /text"] == 3


# -- the shared client ---------------------------------------------------------------------------


async def test_one_shared_client_is_reused_and_closed_with_the_registry(
    server: tuple[str, ServiceState],
) -> None:
    url, state = server
    async with corral.ToolRegistry() as reg:
        tools = await register_openapi(reg, f"{url}/openapi.json")
        service = service_of(tools[0])
        assert all(service_of(t) is service for t in tools)
        for i in range(5):
            result = await run_one(reg, "get_flaky", key=str(i))
            assert result.status is Status.OK
        # Five calls, one after another, over one kept-alive connection.
        assert len(state.connections) == 1
        assert service.statistics() == OpenAPIStatistics(in_flight=0, requests=5, retries=0)
        open_before = not service.client.is_closed
    assert open_before
    assert service.client.is_closed
    await service.aclose()  # idempotent
    with pytest.raises(corral.ClosedError, match="OpenAPI service"):
        await tools[0].fn(key="late")


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        pytest.param(
            {"swagger": "2.0", "paths": {}}, r"not OpenAPI 3\.0 or 3\.1 \(got Swagger 2\.0\)"
        ),
        pytest.param({"openapi": "4.0.0"}, r"got OpenAPI 4\.0\.0"),
        pytest.param([1, 2], "spec must be a URL, a file path or a mapping, got list"),
        pytest.param(
            {**MINIMAL, "paths": {"/x": {"get": {"parameters": [{"$ref": "other.yaml#/P"}]}}}},
            r"external \$ref 'other\.yaml#/P'",
        ),
        pytest.param(
            {**MINIMAL, "paths": {"/x": {"get": {"parameters": [{"$ref": "#/components/nope"}]}}}},
            r"\$ref '#/components/nope' .* points at nothing: no 'components'",
        ),
        pytest.param({**MINIMAL, "paths": {}}, "has no operations"),
        pytest.param(MINIMAL, "names no server: pass base_url="),
    ],
)
async def test_bad_specs_are_usage_errors(
    registry: corral.ToolRegistry, spec: Any, match: str
) -> None:
    with pytest.raises(corral.UsageError, match=match):
        await register_openapi(registry, spec)
    assert len(registry) == 0


async def test_missing_files_urls_and_taken_names_are_usage_errors(
    server: tuple[str, ServiceState], registry: corral.ToolRegistry, tmp_path: Path
) -> None:
    url, _ = server
    with pytest.raises(corral.UsageError, match=r"OpenAPI spec '.*nope\.yaml' does not exist"):
        await register_openapi(registry, tmp_path / "nope.yaml")
    with pytest.raises(corral.UsageError, match=r"/missing\.json' returned 404"):
        await register_openapi(registry, f"{url}/missing.json")
    spec_file = tmp_path / "shop.json"
    spec_file.write_text(json.dumps(MINIMAL))
    await register_openapi(registry, spec_file, base_url=url)
    with pytest.raises(corral.UsageError, match="tools 'get_item' are already registered"):
        await register_openapi(registry, f"{url}/openapi.json")
    assert [t.name for t in registry] == ["get_item"]
    with pytest.raises(corral.UsageError, match="namespace 'a b' is not valid"):
        await register_openapi(registry, MINIMAL, namespace="a b", base_url=url)
    with pytest.raises(corral.UsageError, match="timeout must be a positive number"):
        await register_openapi(registry, MINIMAL, timeout=0, base_url=url)
