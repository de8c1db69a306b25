"""A real FastAPI service for the OpenAPI tool tests, with server-side counters and gates.

Every test makes its own app (`make_app`), so counters start at zero. Gates are `asyncio.Event`s
the handlers wait on, bounded by `GATE_TIMEOUT_S` so a broken scheduler fails the test with a
500 instead of hanging it.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Cookie, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

GATE_TIMEOUT_S = 5.0


class Item(BaseModel):
    """An item for sale."""

    name: str
    price: float
    tags: list[str] = []


class Thing(BaseModel):
    """A body whose `id` clashes with the path parameter `id`: it cannot be flattened."""

    id: int
    label: str


@dataclass
class Barrier:
    """Lets a handler wait until `parties` requests have arrived (proof they were in flight)."""

    parties: int
    arrived: int = 0
    event: asyncio.Event = field(default_factory=asyncio.Event)

    async def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.event.set()
        await self.wait()

    async def wait(self) -> None:
        async with asyncio.timeout(GATE_TIMEOUT_S):
            await self.event.wait()


@dataclass
class ServiceState:
    """What the server saw: requests per route, their order, overlap, connections, timings."""

    items: dict[int, dict[str, Any]] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    events: list[str] = field(default_factory=list)
    writes_in_flight: int = 0
    max_writes_in_flight: int = 0
    read_barrier: Barrier | None = None
    """When set, GET /items/{id} waits until this many reads are in flight at once."""
    connections: set[tuple[str, int]] = field(default_factory=set)
    headers: list[dict[str, str]] = field(default_factory=list)
    arrivals: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    fail_plan: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    """Per `/flaky/{key}`: the responses (status, headers) to give before succeeding."""
    release_slow: asyncio.Event = field(default_factory=asyncio.Event)
    created: int = 0


def make_app() -> tuple[FastAPI, ServiceState]:
    """Return a fresh app and the state its handlers record into."""
    app = FastAPI(title="Shop", version="1.0")
    state = ServiceState()
    _record_requests(app, state)
    _item_routes(app, state)
    _other_routes(app, state)
    return app, state


def _record_requests(app: FastAPI, state: ServiceState) -> None:

    @app.middleware("http")
    async def record(request: Request, call_next: Any) -> Any:
        if request.url.path != "/openapi.json":
            client = request.scope.get("client")
            if client is not None:
                state.connections.add((client[0], client[1]))
            state.headers.append(dict(request.headers))
            state.hits[f"{request.method} {request.url.path}"] += 1
            state.arrivals[f"{request.method} {request.url.path}"].append(
                asyncio.get_running_loop().time()
            )
        return await call_next(request)


def _item_routes(app: FastAPI, state: ServiceState) -> None:
    @app.get("/items/{item_id}", operation_id="get_item", summary="Fetch one item")
    async def get_item(item_id: int, verbose: bool = False, q: str | None = None) -> Any:
        """Return the item, with its id."""
        if state.read_barrier is not None:
            state.events.append(f"read {item_id} start")
            await state.read_barrier.arrive()
        item = state.items.get(item_id)
        if item is None:
            return JSONResponse(
                {"detail": f"item {item_id} not found", "padding": "x" * 500}, status_code=404
            )
        return {"id": item_id, **item, "verbose": verbose, "q": q}

    @app.put("/items/{item_id}", operation_id="put_item")
    async def put_item(item_id: int, item: Item) -> Any:
        """Create or replace an item."""
        state.writes_in_flight += 1
        state.max_writes_in_flight = max(state.max_writes_in_flight, state.writes_in_flight)
        state.events.append(f"put {item.name} start")
        try:
            if state.read_barrier is not None:
                # Hold the first write until the batch's concurrent reads have all arrived: had the
                # scheduler also sent the second write now, it would have arrived meanwhile.
                await state.read_barrier.wait()
            state.items[item_id] = item.model_dump()
        finally:
            state.writes_in_flight -= 1
            state.events.append(f"put {item.name} end")
        return {"id": item_id, **item.model_dump()}

    @app.delete("/items/{item_id}", operation_id="delete_item", status_code=204)
    async def delete_item(item_id: int) -> Response:
        state.items.pop(item_id, None)
        return Response(status_code=204)

    @app.post("/items", operation_id="create_item", status_code=201)
    async def create_item(item: Item, dry_run: bool = False) -> Any:
        """Add an item; the server picks its id."""
        state.created += 1
        return {"id": 1000 + state.created, "dry_run": dry_run, **item.model_dump()}


def _other_routes(app: FastAPI, state: ServiceState) -> None:
    @app.get("/search", operation_id="search")
    async def search(
        q: str,
        x_trace: Annotated[str | None, Header()] = None,
        session: Annotated[str | None, Cookie()] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 10,
        tag: Annotated[list[str] | None, Query()] = None,
    ) -> Any:
        """Search items by name."""
        return {"q": q, "trace": x_trace, "session": session, "limit": limit, "tag": tag}

    @app.put("/things/{id}", operation_id="put_thing")
    async def put_thing(
        id: int, thing: Thing, query_id: Annotated[int | None, Query(alias="id")] = None
    ) -> Any:
        """Store a thing; the path id, the query id and the body's id are all distinct."""
        return {"path_id": id, "query_id": query_id, "body": thing.model_dump()}

    @app.get("/flaky/{key}", operation_id="get_flaky")
    async def get_flaky(key: str) -> Any:
        plan = state.fail_plan.get(key, [])
        if plan:
            status, headers = plan.pop(0)
            return JSONResponse({"detail": f"flaky {status}"}, status_code=status, headers=headers)
        return {"key": key}

    @app.post("/flaky/{key}", operation_id="post_flaky")
    async def post_flaky(key: str) -> Any:
        return JSONResponse(
            {"detail": "unavailable"}, status_code=503, headers={"Retry-After": "0"}
        )

    @app.get("/slow", operation_id="slow")
    async def slow() -> Any:
        async with asyncio.timeout(GATE_TIMEOUT_S):
            await state.release_slow.wait()
        return {"slow": True}

    @app.get("/text", operation_id="text", response_class=PlainTextResponse)
    async def text() -> str:
        return "plain hello"
