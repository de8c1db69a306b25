"""Health, readiness, metrics, the OpenAPI document, and start-up's GC freeze."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from tests.server.conftest import MakeSettings, Server, started
from tests.server.helpers import parse_sse

SSE = {"accept": "text/event-stream"}


async def test_metrics_report_the_manager_tools_and_requests(server: Server) -> None:
    async with server.client() as client:
        sid = (await client.post("/sessions", json={})).json()["id"]
        response = await client.post(
            f"/sessions/{sid}/messages",
            json={"message": "read missing.txt and calculate 1+1"},
            headers=SSE,
        )
        assert parse_sse(response.text)[-1]["event"] == "done"
        text = (await client.get("/metrics")).text
    for name in (
        "corral_manager_queued 0.0",
        "corral_manager_running 0.0",
        "corral_manager_streams_in_use 0.0",
        "corral_manager_dedup_hits_total 0.0",
        "corral_manager_cache_hits_total 0.0",
        "corral_requests_running 0.0",
        "corral_sse_streams 0.0",
        "corral_provider_retries_total 0.0",
        "corral_provider_rate_limited_total 0.0",
        'corral_tool_calls_total{status="ok"} 1.0',
        'corral_tool_calls_total{status="error"} 1.0',
        'corral_requests_total{status="done"} 1.0',
    ):
        assert name in text, name


async def test_health_and_readiness(server: Server) -> None:
    async with server.client() as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).json() == {"status": "ready"}
        sid = (await client.post("/sessions", json={})).json()["id"]
        await server.runtime.drain()
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        refused = await client.post(f"/sessions/{sid}/messages", json={"message": "hi"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert (await client.post("/sessions", json={})).status_code == 503
        # Reading goes on while draining.
        assert (await client.get(f"/sessions/{sid}")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200


async def test_openapi_document_is_served(server: Server) -> None:
    async with server.client() as client:
        document = (await client.get("/openapi.json")).json()
    paths = document["paths"]
    for path in (
        "/sessions",
        "/sessions/{session_id}",
        "/sessions/{session_id}/messages",
        "/sessions/{session_id}/cancel",
        "/requests/{request_id}",
        "/requests/{request_id}/events",
        "/memory/{scope}/{key}",
        "/memory/{scope}/{key}/append",
        "/memory/{scope}/{key}/increment",
        "/agents",
        "/tools",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    assert (
        "text/event-stream"
        in paths["/requests/{request_id}/events"]["get"]["responses"]["200"]["content"]
    )
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_start_up_freezes_what_it_made(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def collect(*args: object) -> int:
        calls.append("collect")
        return 0

    monkeypatch.setattr(gc, "collect", collect)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    before = gc.get_threshold()
    async with started(make_settings(gc_freeze=True, gc_threshold=(5000, 20, 30))):
        assert calls == ["collect", "freeze"]
        assert gc.get_threshold() == (5000, 20, 30)
    assert gc.get_threshold() == before  # the process's own, back after the server


def test_no_route_or_dependency_runs_in_a_thread(make_settings: MakeSettings) -> None:
    """FastAPI runs a plain `def` endpoint or dependency in its thread pool: a hop per request."""
    import inspect

    from fastapi.routing import APIRoute

    from corral.server import ServerConfig, create_app

    app = create_app(make_settings(), config=ServerConfig.empty())
    sync: list[str] = []

    def visit(dependant: Any, where: str) -> None:
        call = dependant.call
        if call is not None:
            target = call if inspect.isroutine(call) else type(call).__call__
            if not inspect.iscoroutinefunction(target):
                sync.append(f"{where}: {getattr(call, '__name__', call)}")
        for sub in dependant.dependencies:
            visit(sub, where)

    def api_routes(routes: list[Any]) -> list[APIRoute]:
        found: list[APIRoute] = []
        for route in routes:
            if isinstance(route, APIRoute):
                found.append(route)
            included = getattr(route, "original_router", None)  # an include_router() router
            if included is not None:
                found += api_routes(included.routes)
        return found

    routes = api_routes(app.routes)
    assert len(routes) >= 15
    for route in routes:
        visit(route.dependant, route.path)
    assert sync == []
