"""The API's routes, one module per resource."""

from corral.server.routes import agents, health, memory, requests, sessions

ROUTERS = (
    sessions.router,
    requests.router,
    memory.router,
    agents.router,
    health.router,
)

__all__ = ["ROUTERS"]
