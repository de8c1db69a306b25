"""A server per test: the app with its lifespan run, tenants "acme" and "globex" with keys.

In-process tests drive the app through `httpx.ASGITransport` (which buffers a response until it
ends: SSE tests here read finished requests); tests of live streams, disconnects and shutdown
run a real uvicorn on 127.0.0.1 (`test_uvicorn.py`).
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import corral
from corral.errors import NotFound
from corral.providers import Provider
from corral.server import Runtime, ServerConfig, ServerSettings, create_app
from tests.state.conftest import fresh_postgres_url, postgres  # noqa: F401 - fixtures
from tests.support import unclosed_async_generators

TENANTS = ("acme", "globex")


@dataclass
class Server:
    """A started app, its runtime, and an API key per tenant."""

    app: FastAPI
    runtime: Runtime
    keys: dict[str, str] = field(default_factory=dict)

    def client(self, tenant: str = "acme", **headers: str) -> httpx.AsyncClient:
        """An HTTP client of the app, authenticated as `tenant`."""
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://corral.test",
            headers={"authorization": f"Bearer {self.keys[tenant]}", **headers},
        )


async def add_tenants(runtime: Runtime, names: tuple[str, ...] = TENANTS) -> dict[str, str]:
    """Make (or find) the tenants and a fresh key for each."""
    keys = {}
    for name in names:
        try:
            await runtime.store.get_tenant(name)
        except NotFound:
            await runtime.store.create_tenant(name, tenant_id=name)
        keys[name], _ = await runtime.store.create_api_key(name)
    return keys


@asynccontextmanager
async def started(
    settings: ServerSettings,
    *,
    provider: Provider | None = None,
    config: ServerConfig | None = None,
    check_idle: bool = True,
) -> AsyncIterator[Server]:
    """Run the app's lifespan; yield the server; check it returned to idle; shut it down."""
    app = create_app(settings, provider=provider, config=config or ServerConfig.empty())
    with unclosed_async_generators(under=Path(corral.__file__).parent) as unclosed:
        async with app.router.lifespan_context(app):
            runtime: Runtime = app.state.runtime
            server = Server(app, runtime, await add_tenants(runtime))
            yield server
            if check_idle:
                stats = runtime.statistics()
                assert stats.idle, f"server not idle after the test: {stats}"
        gc.collect()
    # A generator dropped half-way is closed later by the loop, out of order: none may be.
    assert unclosed == [], f"async generators left to the garbage collector: {unclosed}"


MakeSettings = Callable[..., ServerSettings]


@pytest.fixture
def make_settings(tmp_path: Path) -> MakeSettings:
    """Settings with a data directory of the test's own, no GC freeze and no dev key."""

    def make(**values: Any) -> ServerSettings:
        defaults: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "gc_freeze": False,
            "create_dev_key": False,
            "shutdown_grace_s": 5.0,
        }
        return ServerSettings(**{**defaults, **values})

    return make


@pytest.fixture
async def server(make_settings: MakeSettings) -> AsyncIterator[Server]:
    """The built-in demo agent (scripted model, file tools) on SQLite."""
    async with started(make_settings()) as running:
        yield running
