"""`ProviderRouter`: one provider in front of many, so one request manager serves every agent.

The request manager wraps a single provider, and agents may each use another (OpenAI for one,
a local vLLM for the next, the scripted model for a third). The router is that single provider:
each agent asks for ``"<route>::<model>"``, and the router strips the route and hands the call to
the route's provider. The route also keeps the manager's dedup keys of different providers
apart, since the model name is part of the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping

from corral.errors import UsageError
from corral.providers import ModelCapabilities, ModelRequest, Provider, ProviderEvent

__all__ = ["ProviderRouter"]

_SEPARATOR = "::"


class ProviderRouter:
    """Route each call to a provider by the route prefix of its model name.

    Args:
        routes: Route name -> provider. `aclose()` closes each provider once.
    """

    name = "corral"

    def __init__(self, routes: Mapping[str, Provider]) -> None:
        for route in routes:
            if not route or _SEPARATOR in route:
                raise UsageError(f"route names are non-empty and without '::', got {route!r}")
        self._routes = dict(routes)

    @staticmethod
    def model(route: str, model: str) -> str:
        """Return the model name an agent asks for to reach `model` through `route`."""
        return f"{route}{_SEPARATOR}{model}"

    def _split(self, model: str) -> tuple[Provider, str]:
        route, sep, inner = model.partition(_SEPARATOR)
        provider = self._routes.get(route) if sep else None
        if provider is None:
            raise UsageError(f"model {model!r} names no route (known: {sorted(self._routes)})")
        return provider, inner

    def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        """Stream the call from the route's provider, with the route taken off the model name.

        The route's own stream is returned, not wrapped: every event would otherwise pass
        through one more generator, and closing it is the caller's as it would be the wrapper's.
        """
        provider, model = self._split(request.model)
        return provider.stream(dataclasses.replace(request, model=model))

    def capabilities(self, model: str) -> ModelCapabilities:
        """Return what the route's provider says of the model."""
        provider, inner = self._split(model)
        return provider.capabilities(inner)

    async def aclose(self) -> None:
        """Close every provider once (a provider serving several routes too)."""
        seen: set[int] = set()
        for provider in self._routes.values():
            if id(provider) not in seen:
                seen.add(id(provider))
                await provider.aclose()
