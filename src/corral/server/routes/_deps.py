"""What every route depends on: the runtime, and the tenant its API key names."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from corral.server._runtime import Runtime
from corral.state import Tenant

__all__ = ["RuntimeDep", "TenantDep", "get_runtime", "tenant"]

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key (`corral keys create`); it names the tenant every query is scoped to.",
)


async def get_runtime(request: Request) -> Runtime:
    """Return the app's runtime.

    `async`, as every dependency here: FastAPI runs a plain `def` dependency in its thread
    pool, a hop to a thread and back on every request.
    """
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def tenant(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    """Return the tenant of the request's API key; 401 without a valid one."""
    if credentials is None:
        raise HTTPException(
            401,
            "an API key is required: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    found = await runtime.store.tenant_for_key(credentials.credentials)
    if found is None:
        raise HTTPException(
            401,
            "the API key is not valid (unknown, malformed or revoked)",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return found


TenantDep = Annotated[Tenant, Depends(tenant)]
