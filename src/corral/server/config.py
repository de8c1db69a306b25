"""`corral.toml`: the server's settings, the default provider, and the agents it serves.

::

    [server]                         # any ServerSettings field (CORRAL_* variables win)
    port = 8000

    [provider]                       # the default provider of every agent (see providers.settings)
    provider = "openai"
    model = "gpt-4.1-mini"
    api_key_env = "OPENAI_API_KEY"   # the NAME of the variable holding the key, never the key

    [agents.helper]
    description = "Answers questions about the shop."
    model = "gpt-4.1"                # provider, model, base_url, api_key_env, rpm... override
    system = "You are terse."
    max_steps = 8
    policy = "enqueue"               # concurrent | enqueue | reject | interrupt
    tools = ["shop.tools:registry", "shop.tools:add", "shop.tools:Inventory"]
    demo_tools = false               # the built-in file tools, in each session's directory

    [[agents.helper.openapi]]
    spec = "http://127.0.0.1:9000/openapi.json"   # a URL, or a file relative to this one
    namespace = "shop"

    [[agents.helper.mcp]]
    target = "python fs_server.py"   # a command (stdio), or an http(s) URL
    namespace = "fs"

Everything that can be checked without the network is checked by `load_config`: TOML syntax,
every key and value, the imports of Python tools, and that the providers' key variables are set.
Each error names the file, the line and the bad value. tomllib reports no positions for values,
so `_Lines` finds the line of a key (or of a value in a list) in the text.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from corral.errors import UsageError
from corral.providers.settings import ProviderSettings, load_settings
from corral.sessions import SessionPolicy
from corral.tools import ToolRegistry

__all__ = [
    "AgentConfig",
    "ConfigError",
    "MCPSource",
    "OpenAPISource",
    "ServerConfig",
    "load_config",
]

AgentName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
_PROVIDER_FIELDS = (
    "provider",
    "model",
    "base_url",
    "api_key_env",
    "timeout_s",
    "rpm",
    "tpm",
    "max_concurrency",
    "max_attempts",
    "transport",
)


class ConfigError(UsageError):
    """The config file is wrong: the message names the file, the line and the bad value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_SECRET_KEYS = frozenset({"api_key", "apikey", "key", "token", "password", "secret"})


def _secret_key(data: Any, loc: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Return the path of the first key that looks like a secret, if any."""
    if isinstance(data, dict):
        for key, value in data.items():
            if str(key).lower() in _SECRET_KEYS:
                return (*loc, key)
            found = _secret_key(value, (*loc, key))
            if found:
                return found
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found = _secret_key(value, (*loc, index))
            if found:
                return found
    return None


class OpenAPISource(_Strict):
    """An OpenAPI document whose operations become tools."""

    spec: str = Field(description="A URL, or a file path relative to the config file.")
    namespace: str | None = None
    base_url: str | None = None
    headers_env: dict[str, str] = Field(
        default_factory=dict, description="Header name -> environment variable holding its value."
    )
    timeout_s: float | None = Field(default=None, gt=0)


class MCPSource(_Strict):
    """An MCP server whose tools become tools: a command (stdio) or an http(s) URL."""

    target: str | list[str]
    namespace: str | None = None
    headers_env: dict[str, str] = Field(default_factory=dict)


class AgentConfig(_Strict):
    """One agent the server serves."""

    description: str = ""
    provider: Literal["openai", "anthropic", "scripted"] | None = None
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    max_attempts: int | None = Field(default=None, ge=1)
    transport: Literal["direct", "sdk"] | None = None
    system: str | None = None
    max_steps: int = Field(default=10, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    tool_timeout_s: float | None = Field(default=None, gt=0)
    policy: SessionPolicy = "concurrent"
    tools: list[str] = Field(default_factory=list)
    demo_tools: bool = False
    openapi: list[OpenAPISource] = Field(default_factory=list)
    mcp: list[MCPSource] = Field(default_factory=list)

    def provider_values(self) -> dict[str, Any]:
        """Return the provider settings this agent sets (they override env and [provider])."""
        return {k: getattr(self, k) for k in _PROVIDER_FIELDS if getattr(self, k) is not None}


class _File(_Strict):
    server: dict[str, Any] = Field(default_factory=dict)
    provider: dict[str, Any] = Field(default_factory=dict)
    agents: dict[AgentName, AgentConfig] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolRef:
    """A Python tool named in `tools`, imported: what `register` gets, and where it was named."""

    ref: str
    obj: Any
    kind: Literal["function", "class", "registry", "factory"]
    where: str


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """A loaded, checked config file (or none: `ServerConfig.empty()`).

    `providers` holds each agent's provider settings, resolved (agent values, then CORRAL_*
    variables, then [provider]); `tool_refs` its Python tools, imported.
    """

    path: Path | None
    server: Mapping[str, Any]
    agents: Mapping[str, AgentConfig]
    providers: Mapping[str, ProviderSettings]
    tool_refs: Mapping[str, tuple[ToolRef, ...]]
    default_provider: ProviderSettings
    lines: _Lines | None = field(default=None, repr=False)

    @classmethod
    def empty(cls) -> ServerConfig:
        """No file: the built-in demo agent, provider settings from CORRAL_* variables."""
        return cls(None, {}, {}, {}, {}, _provider_settings(None, {}, None, ()))

    def where(self, *loc: str | int, value: object = None) -> str:
        """Return "FILE:LINE" of a key path such as ("agents", "helper", "tools", 1)."""
        if self.path is None:
            return "(no config file)"
        line = self.lines.find(loc, value) if self.lines is not None else None
        return f"{self.path}:{line}" if line else str(self.path)

    def error(self, loc: Sequence[str | int], value: object, problem: str) -> ConfigError:
        """Return a `ConfigError` naming the file, the line and the bad value."""
        return ConfigError(
            f"{self.where(*loc, value=value)}: {_dotted(loc)} = {value!r}: {problem}"
        )

    def base_dir(self) -> Path:
        """Where relative paths in the file are resolved: the file's directory (or the cwd)."""
        return self.path.parent if self.path is not None else Path.cwd()


def load_config(path: str | os.PathLike[str] | None) -> ServerConfig:
    """Read and check a config file; None (and no CORRAL_CONFIG) gives the empty config.

    Raises:
        ConfigError: the file is missing, is not TOML, or holds a bad key or value; a Python
            tool does not import; a provider's API key variable is not set.
    """
    if path is None:
        named = os.environ.get("CORRAL_CONFIG")
        if not named:
            return ServerConfig.empty()
        path = named
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        where = f"{path}:{found.group(1)}" if found else str(path)
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    lines = _Lines(text)
    secret = _secret_key(data)
    if secret is not None:
        line = lines.find(secret)
        raise ConfigError(
            f"{path}:{line}: {_dotted(secret)}: the config file must not hold secrets; put the "
            "key in an environment variable and name that variable (api_key_env, headers_env)"
        )
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(path, lines, data, exc) from None
    located = ServerConfig(path, parsed.server, {}, {}, {}, ProviderSettings(), lines)
    default = _provider_settings(path, {}, located, ("provider",))
    providers = {
        name: _provider_settings(path, agent.provider_values(), located, ("agents", name))
        for name, agent in parsed.agents.items()
    }
    base = path.parent.resolve()
    if str(base) not in sys.path:
        # Tools of the config's own directory import, as uvicorn's --app-dir makes them.
        sys.path.insert(0, str(base))
    refs = {
        name: tuple(
            _import_tool(ref, located, ("agents", name, "tools", i))
            for i, ref in enumerate(agent.tools)
        )
        for name, agent in parsed.agents.items()
    }
    for name, agent in parsed.agents.items():
        registries = [r for r in refs[name] if r.kind in ("registry", "factory")]
        if len(registries) > 1:
            raise located.error(
                ("agents", name, "tools"),
                [r.ref for r in registries],
                "name at most one ToolRegistry per agent; its other tools are added to it",
            )
        _check_headers(located, name, agent)
    return ServerConfig(path, parsed.server, parsed.agents, providers, refs, default, lines)


def _provider_settings(
    path: Path | None,
    values: dict[str, Any],
    located: ServerConfig | None,
    loc: tuple[str, ...],
) -> ProviderSettings:
    try:
        settings = load_settings(path, **values)
        _check_api_key(settings)
    except UsageError as exc:
        if located is None:
            raise
        key = next((k for k in ("api_key_env", "provider", "model") if k in values), None)
        target = (*loc, key) if key else loc
        raise ConfigError(f"{located.where(*target)}: {_dotted(loc)}: {exc}") from None
    return settings


_DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def _check_api_key(settings: ProviderSettings) -> None:
    # The same rule `provider_from_settings` applies, checked before anything starts.
    if settings.provider not in _DEFAULT_KEY_ENV or settings.base_url is not None:
        return
    env = settings.api_key_env or _DEFAULT_KEY_ENV[settings.provider]
    if not os.environ.get(env):
        raise UsageError(
            f"provider {settings.provider!r} needs an API key in the environment variable "
            f"{env!r}, which is not set"
        )


def _import_tool(ref: str, located: ServerConfig, loc: tuple[str | int, ...]) -> ToolRef:
    where = located.where(*loc, value=ref)
    module_name, sep, attribute = ref.partition(":")
    if not sep or not module_name or not attribute:
        raise located.error(loc, ref, "a Python tool is named as package.module:attribute")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise located.error(loc, ref, f"cannot import {module_name!r}: {exc}") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise located.error(
                loc, ref, f"module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if isinstance(obj, ToolRegistry):
        return ToolRef(ref, obj, "registry", where)
    if isinstance(obj, type):
        return ToolRef(ref, obj, "class", where)
    if callable(obj):
        return ToolRef(ref, obj, "factory" if _is_factory(obj) else "function", where)
    raise located.error(
        loc,
        ref,
        f"is a {type(obj).__name__}: name a function, a class, a ToolRegistry, or a function "
        "returning a ToolRegistry",
    )


def _is_factory(fn: Any) -> bool:
    """Whether `fn` makes a registry: no required parameters, annotated to return one."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    if any(
        p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in signature.parameters.values()
    ):
        return False
    returns = signature.return_annotation
    if isinstance(returns, str):  # postponed annotations: compare by name
        return returns.rsplit(".", 1)[-1] == "ToolRegistry"
    return isinstance(returns, type) and issubclass(returns, ToolRegistry)


def _check_headers(located: ServerConfig, name: str, agent: AgentConfig) -> None:
    sources: list[tuple[str, int, dict[str, str]]] = [
        ("openapi", i, s.headers_env) for i, s in enumerate(agent.openapi)
    ] + [("mcp", i, s.headers_env) for i, s in enumerate(agent.mcp)]
    for kind, index, headers in sources:
        for header, env in headers.items():
            if not os.environ.get(env):
                raise located.error(
                    ("agents", name, kind, index, "headers_env", header),
                    env,
                    f"the environment variable {env!r} (for header {header!r}) is not set",
                )


def resolve_headers(headers_env: Mapping[str, str]) -> dict[str, str]:
    """Return the headers, each read from the environment variable the config names."""
    return {header: os.environ.get(env, "") for header, env in headers_env.items()}


def _validation_error(
    path: Path, lines: _Lines, data: dict[str, Any], exc: ValidationError
) -> ConfigError:
    problems = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if p != "[key]")
        value = _lookup(data, loc)
        line = lines.find(loc, value if value is not _MISSING else None)
        where = f"{path}:{line}" if line else str(path)
        if value is _MISSING:
            problems.append(f"{where}: {_dotted(loc)}: {error['msg']}")
        else:
            problems.append(f"{where}: {_dotted(loc)} = {value!r}: {error['msg']}")
    return ConfigError("\n".join(problems))


_MISSING = object()


def _lookup(data: Any, loc: Sequence[str | int]) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return _MISSING
    return data


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_HEADER = re.compile(r"^\s*(\[\[?)([^\[\]]+)\]\]?\s*(?:#.*)?$")
_KEY = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)
_PART = re.compile(r"""\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*(?:\.|$)""")


class _Lines:
    """Where each key of a TOML text is: table headers and `key = value` lines, by key path.

    Arrays of tables count their elements, as pydantic's locations do: the second
    ``[[agents.a.mcp]]`` is ("agents", "a", "mcp", 1). Every prefix of a path maps to the first
    line that mentions it, so a missing key is reported at its table.
    """

    def __init__(self, text: str) -> None:
        self.text_lines = text.splitlines()
        self.paths: dict[tuple[str | int, ...], int] = {}
        table: tuple[str | int, ...] = ()
        counts: dict[tuple[str | int, ...], int] = {}
        for number, line in enumerate(self.text_lines, 1):
            header = _HEADER.match(line)
            if header:
                table = tuple(_split(header.group(2)))
                if header.group(1) == "[[":
                    index = counts.get(table, 0)
                    counts[table] = index + 1
                    table = (*table, index)
                self._record(table, number)
                continue
            key = _KEY.match(line)
            if key:
                self._record((*table, *_split(key.group(1))), number)

    def _record(self, path: tuple[str | int, ...], number: int) -> None:
        for n in range(1, len(path) + 1):
            self.paths.setdefault(path[:n], number)
        self.paths[path] = min(self.paths.get(path, number), number)

    def find(self, loc: Sequence[str | int], value: object = None) -> int | None:
        """Return the line of `loc` (or of its nearest recorded parent), or None."""
        loc = tuple(loc)
        for n in range(len(loc), 0, -1):
            line = self.paths.get(loc[:n])
            if line is None:
                continue
            if n < len(loc) and isinstance(value, str) and value:
                # Inside a list or inline table on (or after) the line: the value's own line.
                for offset, text in enumerate(self.text_lines[line - 1 : line + 200]):
                    if offset and (_HEADER.match(text) or _KEY.match(text)):
                        break
                    if value in text:
                        return line + offset
            return line
        return None


def _split(dotted: str) -> list[str]:
    return [p.strip("\"'") for p in _PART.findall(dotted)]
