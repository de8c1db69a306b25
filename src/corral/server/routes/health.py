"""Liveness, readiness and metrics: no API key needed."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from corral.errors import NotFound, StateError
from corral.server.routes._deps import RuntimeDep

__all__ = ["router"]

router = APIRouter(tags=["health"])

_PROBE_TENANT = "readyz-probe"


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Answer while the process serves HTTP at all."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready: starting or shutting down."}})
async def readyz(runtime: RuntimeDep) -> Response:
    """Answer 200 while the server admits requests and its database answers; else 503."""
    if not runtime.admitting:
        return JSONResponse({"status": "shutting down"}, status_code=503)
    try:
        await runtime.store.get_tenant(_PROBE_TENANT)  # one indexed read
    except NotFound:
        pass
    except StateError as exc:
        return JSONResponse({"status": "database unavailable", "detail": str(exc)}, 503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: request manager, streams, tools, providers, store."""
    registry = request.app.state.metrics
    if registry is None:
        return JSONResponse({"detail": "install prometheus-client for /metrics"}, 503)
    from corral.server._metrics import render

    return Response(render(registry), media_type="text/plain; version=0.0.4; charset=utf-8")
