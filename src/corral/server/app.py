"""`create_app`: the corral HTTP API as a FastAPI app, and the lifespan that runs its runtime.

    app = create_app(load_server_settings())       # any ASGI server; `corral serve` uses uvicorn

The lifespan starts the `Runtime` (store, agents, sessions) and, on shutdown, drains it: new
requests get 503, running ones may finish within `shutdown_grace_s`, the rest are cancelled with a
final event, then everything is closed. Under `corral serve` the drain starts as soon as the
server is asked to stop, while the SSE streams are still open (see `corral.server._serve`).
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from corral.errors import (
    ClosedError,
    NotFound,
    QueueFull,
    SessionBusy,
    StateError,
    UsageError,
)
from corral.providers import Provider
from corral.server._body_limit import BodyLimit
from corral.server._runtime import Draining, Runtime
from corral.server.config import ServerConfig, load_config
from corral.server.routes import ROUTERS
from corral.server.settings import ServerSettings, load_server_settings

__all__ = ["create_app", "drain"]

logger = logging.getLogger(__name__)

_DESCRIPTION = """\
Sessions of LLM agents, each request a stream of events (SSE, resumable by `Last-Event-ID`),
persisted histories, versioned shared memory with optimistic concurrency, and tenants.

Every route but /healthz, /readyz and /metrics needs `Authorization: Bearer <API key>`; the key
names a tenant, and another tenant's sessions, requests and memory answer 404.
"""


def create_app(
    settings: ServerSettings | None = None,
    *,
    config: ServerConfig | None = None,
    provider: Provider | None = None,
    runtime: Runtime | None = None,
) -> FastAPI:
    """Return the API app; its lifespan starts and closes the runtime.

    Args:
        settings: The server's settings; read from CORRAL_* variables if None.
        config: The agents to serve; read from `settings.config` if None (no file: the
            built-in demo agent).
        provider: Use this provider for every agent (tests, embedding).
        runtime: A runtime already started by the caller, who also closes it (`corral
            serve` starts it before binding the port, so a bad config fails fast).

    Raises:
        ConfigError: the config file is wrong (file, line and value named).
    """
    settings = settings or load_server_settings()
    if runtime is None and config is None:
        config = load_config(settings.config)
    owned = runtime is None
    app_runtime = runtime or Runtime(settings, config, provider=provider)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await app_runtime.start()
        threshold = gc.get_threshold()
        try:
            if settings.gc_threshold is not None:
                gc.set_threshold(*settings.gc_threshold)
            if settings.gc_freeze:
                # Everything start-up made lives as long as the server: collect once, then
                # keep it out of later full collections (the first one stalls the loop ~0.3 s).
                gc.collect()
                gc.freeze()
            yield
        finally:
            gc.set_threshold(*threshold)
            if owned:
                await app_runtime.aclose()
            else:
                await app_runtime.drain()

    app = FastAPI(
        title="corral",
        summary="An async-native concurrency runtime for LLM agents, over HTTP.",
        description=_DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.state.runtime = app_runtime
    app.state.metrics = _metrics(app)
    for router in ROUTERS:
        app.include_router(router)
    _add_error_handlers(app, settings)
    return app


def _metrics(app: FastAPI) -> Any:
    try:
        from corral.server._metrics import metrics_registry
    except ImportError:  # prometheus-client missing: /metrics says so, the rest serves
        logger.warning("prometheus-client is not installed: /metrics answers 503")
        return None
    return metrics_registry(lambda: app.state.runtime)


async def drain(app: FastAPI) -> None:
    """Stop admitting requests, let running ones finish (grace period), cancel the rest."""
    runtime: Runtime = app.state.runtime
    await runtime.drain()


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI, settings: ServerSettings) -> None:
    retry_after = str(max(1, math.ceil(settings.shutdown_grace_s)))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(SessionBusy)
    async def busy(request: Request, exc: SessionBusy) -> JSONResponse:
        return _error(409, str(exc), running_request_id=exc.running_request_id)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        wait = str(max(1, math.ceil(exc.retry_after_s)))
        return _error(429, str(exc), headers={"retry-after": wait})

    @app.exception_handler(ClosedError)
    async def closed(request: Request, exc: ClosedError) -> JSONResponse:
        # Draining, or a session deleted under the request: either way, try again later.
        headers = {"retry-after": retry_after} if isinstance(exc, Draining) else None
        return _error(503, str(exc), headers=headers)

    @app.exception_handler(UsageError)
    async def usage(request: Request, exc: UsageError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(StateError)
    async def state(request: Request, exc: StateError) -> JSONResponse:
        logger.warning("store failed: %s", exc)
        return _error(503, f"the database is unavailable: {exc}", headers={"retry-after": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        named = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        detail = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in errors]
        return JSONResponse({"detail": detail, "message": named}, status_code=422)
