"""The agents a server runs, built from its config: providers, tool registries, settings.

Every agent's provider is the one request manager, which calls the agent's own provider through
the `ProviderRouter`. Providers with identical settings are built once and shared, so agents on
the same model and key share one rate limiter.
"""

from __future__ import annotations

import inspect
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from corral.agent import Agent
from corral.errors import UsageError
from corral.providers import LimiterRegistry, Provider
from corral.providers.settings import ProviderSettings, provider_from_settings
from corral.server._demo import demo_tools
from corral.server.config import (
    AgentConfig,
    ConfigError,
    ServerConfig,
    ToolRef,
    resolve_headers,
)
from corral.sessions import SessionPolicy
from corral.tools import ToolRegistry

__all__ = ["DEMO_AGENT", "AgentEntry", "build_providers", "build_registry", "describe_provider"]

DEMO_AGENT = "demo"
"""The agent served when the config declares none."""

_DEMO = AgentConfig(
    description="The built-in demo: the scripted model (unless a provider is configured) with "
    "file tools in each session's own directory, a calculator and a simulated fetch.",
    demo_tools=True,
)


@dataclass(frozen=True, slots=True)
class AgentEntry:
    """An agent the server serves, with what the API shows of it."""

    name: str
    description: str
    agent: Agent
    registry: ToolRegistry
    policy: SessionPolicy
    provider: str
    """The provider and model, for people: "openai gpt-4.1 at http://...", "scripted"."""
    model: str | None

    needs_workdir: bool = field(init=False)
    """Whether a tool takes paths (or the call context, with its cwd): then each session gets a
    directory; other agents would leave one empty directory per session."""

    def __post_init__(self) -> None:
        needs = any(tool.path_params or tool.context_param for tool in self.registry)
        object.__setattr__(self, "needs_workdir", needs)


def agent_configs(config: ServerConfig) -> dict[str, AgentConfig]:
    """Return the agents to serve: the config's, or the built-in demo agent."""
    return dict(config.agents) if config.agents else {DEMO_AGENT: _DEMO}


def describe_provider(settings: ProviderSettings) -> str:
    """Return "openai model 'gpt-4.1' at URL", or "scripted (no provider configured)"."""
    if settings.provider is None:
        return "scripted (no LLM provider configured)"
    text: str = settings.provider
    if settings.model:
        text += f" model {settings.model!r}"
    if settings.base_url:
        text += f" at {settings.base_url}"
    return text


def build_providers(
    config: ServerConfig,
    limiters: LimiterRegistry,
    stack: AsyncExitStack,
    *,
    given: Provider | None = None,
) -> dict[str, tuple[str, Provider, ProviderSettings]]:
    """Build each agent's provider: agent name -> (route, provider, its settings).

    `given` replaces every agent's provider (tests, and applications embedding the server).
    Providers are closed by `stack`.
    """
    configs = agent_configs(config)
    routes: dict[str, tuple[str, Provider, ProviderSettings]] = {}
    built: dict[ProviderSettings, tuple[str, Provider]] = {}
    for name in configs:
        settings = config.providers.get(name, config.default_provider)
        if given is not None:
            routes[name] = ("given", given, settings)
            continue
        if settings not in built:
            try:
                provider = provider_from_settings(settings, registry=limiters)
            except UsageError as exc:
                raise ConfigError(f"{config.where('agents', name)}: agents.{name}: {exc}") from None
            stack.push_async_callback(provider.aclose)
            built[settings] = (f"p{len(built)}", provider)
        route, provider = built[settings]
        routes[name] = (route, provider, settings)
    if given is not None:
        stack.push_async_callback(given.aclose)
    return routes


async def build_registry(
    name: str,
    agent: AgentConfig,
    refs: tuple[ToolRef, ...],
    config: ServerConfig,
    *,
    cwd: Path,
    stack: AsyncExitStack,
) -> ToolRegistry:
    """Make and start the agent's registry: its Python tools, demo tools, OpenAPI and MCP.

    Raises:
        ConfigError: a tool does not register, or a remote source cannot be reached; the
            message names the file, the line and the value.
    """
    base = next((r for r in refs if r.kind in ("registry", "factory")), None)
    registry = await _base_registry(base, cwd, config, name)
    stack.push_async_callback(registry.aclose)  # before remote sources: they attach to it
    for index, ref in enumerate(refs):
        try:
            if ref.kind == "function":
                registry.register(ref.obj)
            elif ref.kind == "class":
                registry.register_class(ref.obj)
        except UsageError as exc:
            raise config.error(("agents", name, "tools", index), ref.ref, str(exc)) from None
    if agent.demo_tools:
        demo_tools(registry)
    await _remote_sources(name, agent, registry, config)
    await registry.start()
    return registry


async def _base_registry(
    base: ToolRef | None, cwd: Path, config: ServerConfig, name: str
) -> ToolRegistry:
    if base is None:
        return ToolRegistry(cwd=cwd)
    if base.kind == "registry":
        registry: object = base.obj
    else:
        registry = base.obj()
        if inspect.isawaitable(registry):
            registry = await registry
    if not isinstance(registry, ToolRegistry):
        raise ConfigError(
            f"{base.where}: agents.{name}.tools: {base.ref!r} returned "
            f"{type(registry).__name__}, not a ToolRegistry"
        )
    return registry


async def _remote_sources(
    name: str, agent: AgentConfig, registry: ToolRegistry, config: ServerConfig
) -> None:
    for index, openapi in enumerate(agent.openapi):
        spec = openapi.spec
        if "://" not in spec:
            spec = str(config.base_dir() / spec)
        try:
            await registry.register_openapi(
                spec,
                base_url=openapi.base_url,
                namespace=openapi.namespace,
                headers=resolve_headers(openapi.headers_env),
                timeout=openapi.timeout_s,
            )
        except Exception as exc:  # start-up fails, naming the source; nothing runs half-built
            raise config.error(
                ("agents", name, "openapi", index, "spec"), openapi.spec, f"{exc}"
            ) from exc
    for index, mcp in enumerate(agent.mcp):
        try:
            await registry.register_mcp(
                mcp.target, namespace=mcp.namespace, headers=resolve_headers(mcp.headers_env)
            )
        except Exception as exc:
            loc = ("agents", name, "mcp", index, "target")
            raise config.error(loc, mcp.target, f"{exc}") from exc
