"""What every route depends on: the runtime, and the tenant its API key names."""

from __future__ import annotations

from typing import Annotated, NamedTuple

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPBearer
from starlette.requests import HTTPConnection

from corral.server._runtime import Runtime
from corral.state import Tenant

__all__ = ["Caller", "CallerDep", "RuntimeDep", "caller", "get_runtime"]


async def get_runtime(request: Request) -> Runtime:
    """Return the app's runtime.

    `async`, as every dependency here: FastAPI runs a plain `def` dependency in its thread
    pool, a hop to a thread and back on every request.
    """
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class Caller(NamedTuple):
    """Who calls (the tenant of the API key) and what serves them (the app's runtime)."""

    runtime: Runtime
    tenant: Tenant


class _CallerOfKey(HTTPBearer):
    """The bearer scheme (OpenAPI shows it) that also resolves the key to its tenant.

    One dependency for the caller where there were four (the scheme, the runtime, the look-up,
    the runtime again for the route): FastAPI spends more per dependency it solves than the
    look-up costs with the key cache warm (the runtime's own dependency was ~2% of an agent
    run's instructions under the server bench).
    """

    async def __call__(self, request: HTTPConnection) -> Caller:  # type: ignore[override]
        credentials = await super().__call__(request)
        if credentials is None:
            raise HTTPException(
                401,
                "an API key is required: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        runtime: Runtime = request.app.state.runtime
        found = await runtime.store.tenant_for_key(credentials.credentials)
        if found is None:
            raise HTTPException(
                401,
                "the API key is not valid (unknown, malformed or revoked)",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return Caller(runtime, found)


caller = _CallerOfKey(
    auto_error=False,
    scheme_name="HTTPBearer",
    description="An API key (`corral keys create`); it names the tenant every query is scoped to.",
)
"""The caller of the request's API key; 401 without a valid one."""

CallerDep = Annotated[Caller, Depends(caller)]
