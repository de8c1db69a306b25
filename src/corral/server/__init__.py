"""The corral server: the HTTP API over sessions, requests, persistence, memory and tenants.

`create_app` builds the FastAPI app (any ASGI server runs it); `serve` runs it under uvicorn with
a draining shutdown (what `corral serve` does). Imported lazily, so `corral.server.schemas` (used
by `corral.client`) does not pull in FastAPI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.server._runtime import Runtime
    from corral.server._serve import CorralServer, serve
    from corral.server.app import create_app, drain
    from corral.server.config import ConfigError, ServerConfig, load_config
    from corral.server.settings import ServerSettings, load_server_settings

__all__ = [
    "ConfigError",
    "CorralServer",
    "Runtime",
    "ServerConfig",
    "ServerSettings",
    "create_app",
    "drain",
    "load_config",
    "load_server_settings",
    "serve",
]

_LAZY = {
    "ConfigError": "corral.server.config",
    "CorralServer": "corral.server._serve",
    "Runtime": "corral.server._runtime",
    "ServerConfig": "corral.server.config",
    "ServerSettings": "corral.server.settings",
    "create_app": "corral.server.app",
    "drain": "corral.server.app",
    "load_config": "corral.server.config",
    "load_server_settings": "corral.server.settings",
    "serve": "corral.server._serve",
}


def __getattr__(name: str) -> Any:
    """Import the server's parts on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'corral.server' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
