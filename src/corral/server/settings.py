"""The server's settings: arguments, then CORRAL_* variables, then the config file's [server].

Every setting is an environment variable named ``CORRAL_`` + the field name in capitals
(``CORRAL_PORT=9000``), and a key of the ``[server]`` table of the config file
(``CORRAL_CONFIG=corral.toml`` or ``corral serve --config corral.toml``). `corral serve --help`
lists them all, from this class.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from corral.errors import UsageError

__all__ = ["ServerSettings", "load_server_settings", "settings_help"]

# The [server] table of the config file, for the settings source below (pydantic-settings builds
# sources in a classmethod, with no access to the call's arguments).
_FILE_VALUES: ContextVar[dict[str, Any] | None] = ContextVar(
    "corral_server_file_values", default=None
)


class ServerSettings(BaseSettings):
    """Where the server listens, where it keeps its data, and its limits."""

    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="forbid", frozen=True)

    config: Path | None = Field(
        default=None, description="A TOML file: [server] settings, [provider], [agents.NAME]."
    )
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to listen on.")
    data_dir: Path = Field(
        default=Path(".corral"),
        description="Where the SQLite database and the sessions' working directories live.",
    )
    database_url: str | None = Field(
        default=None,
        description="sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASS@HOST/DB "
        "(default: DATA_DIR/corral.db).",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis (redis://host:6379/0) through which several servers share their "
        "provider rate limits: requests and tokens per minute, and the pause after a 429. "
        "Unset: each server limits itself alone (in-process coordination).",
    )
    db_pool_size: int = Field(
        default=10,
        ge=1,
        description="Database connections kept open (SQLite: reader threads; the writer has its "
        "own). Under sustained load beyond it, overflow connections are opened and closed.",
    )
    db_max_overflow: int = Field(default=10, ge=0, description="Extra connections under load.")
    api_key_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="Trust a verified API key this long without reading the database again. A "
        "key revoked by another process (`corral keys revoke`) works up to this long more; 0: "
        "read on every request.",
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1, description="Largest request body; larger ones get 413."
    )
    shutdown_grace_s: float = Field(
        default=10.0,
        ge=0,
        description="On shutdown, how long running requests may finish before they are cancelled.",
    )
    sse_ping_s: float = Field(
        default=15.0, gt=0, description="Seconds between keep-alive comments on idle streams."
    )
    request_retention_s: float = Field(
        default=300.0,
        ge=0,
        description="How long a finished request's events stay for late readers and resumption.",
    )
    max_loaded_sessions: int = Field(
        default=1000,
        ge=1,
        description="Sessions kept in memory; idle ones beyond this are reloaded when used.",
    )
    create_dev_key: bool = Field(
        default=True,
        description="On first start, create the tenant 'dev' and print an API key for it.",
    )
    gc_freeze: bool = Field(
        default=True,
        description="After start-up, collect once and freeze what is left: later full "
        "collections skip it (the first one otherwise stalls the loop).",
    )
    gc_threshold: tuple[int, int, int] | None = Field(
        default=(10_000, 50, 100),
        description="The garbage collector's thresholds while serving (gc.set_threshold), as a "
        "JSON list; null keeps Python's (700, 10, 10). Fewer young collections, and full ones "
        "rarer: each full one stops the loop for a time that grows with the live heap (50-100 ms "
        "at 200 clients on the bench, several times a second with Python's).",
    )
    max_requests: int | None = Field(
        default=None,
        ge=1,
        description="Agent requests (messages being answered) in flight at once; a message "
        "beyond it gets 429 with Retry-After before anything starts. Unset: max_queue + "
        "max_concurrent_requests, so that the model call of every admitted request finds a "
        "place in the request manager (a request has one model call in flight at a time).",
    )
    max_requests_per_tenant: int | None = Field(
        default=None,
        ge=1,
        description="Agent requests one tenant may have in flight at once (429 beyond it), so "
        "that one tenant cannot take every place from the others. Unset: no per-tenant cap.",
    )
    max_queue: int = Field(
        default=1000, ge=1, description="Request manager: model calls that may wait."
    )
    max_concurrent_requests: int = Field(
        default=100, ge=1, description="Request manager: model calls processed at once."
    )
    max_concurrent_llm_streams: int = Field(
        default=20, ge=1, description="Request manager: provider streams open at once."
    )
    queue_timeout_s: float = Field(
        default=60.0, gt=0, description="Request manager: longest wait in the queue."
    )
    processing_timeout_s: float = Field(
        default=600.0, gt=0, description="Request manager: longest model call."
    )
    dedup: Literal["deterministic", "always", "off"] = Field(
        default="deterministic",
        description="Request manager: share identical in-flight model calls.",
    )
    cache_ttl_s: float | None = Field(
        default=None, gt=0, description="Request manager: keep answers this long (unset: off)."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="uvicorn's and corral's log level."
    )
    loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto",
        description="The event loop: uvloop where it is installed (auto), or asyncio's own.",
    )

    @property
    def request_limit(self) -> int:
        """`max_requests`, or its default: what the request manager can hold."""
        if self.max_requests is not None:
            return self.max_requests
        return self.max_queue + self.max_concurrent_requests

    @property
    def database(self) -> str:
        """The database URL: `database_url`, or a SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'corral.db'}"

    @property
    def url(self) -> str:
        """The base URL clients use."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read arguments, then CORRAL_* variables, then the config file's [server] table."""
        del dotenv_settings, file_secret_settings
        file_values = InitSettingsSource(settings_cls, _FILE_VALUES.get() or {})
        return init_settings, env_settings, file_values


def load_server_settings(
    server_table: dict[str, Any] | None = None,
    *,
    locate: Callable[[str], str | None] | None = None,
    **values: Any,
) -> ServerSettings:
    """Read the settings: `values`, then CORRAL_* variables, then `server_table`, then defaults.

    Args:
        server_table: The [server] table of the config file (see `corral.server.config`).
        locate: Returns "FILE:LINE" of a key of `server_table`, for error messages.
        values: Settings given in code or on the command line; None values are ignored.

    Raises:
        UsageError: a value is invalid; the message names the setting, where it came from
            (argument, variable, or file and line) and the value.
    """
    given = {k: v for k, v in values.items() if v is not None}
    table = dict(server_table or {})
    token = _FILE_VALUES.set(table)
    try:
        return ServerSettings(**given)
    except ValidationError as exc:
        raise UsageError(_describe(exc, given, table, locate)) from None
    finally:
        _FILE_VALUES.reset(token)


def _describe(
    exc: ValidationError,
    given: dict[str, Any],
    table: dict[str, Any],
    locate: Callable[[str], str | None] | None,
) -> str:
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        env = f"CORRAL_{name.upper()}"
        if name in given:
            source = f"{name}={given[name]!r}"
        elif env in os.environ:
            source = f"{env}={os.environ[env]!r}"
        elif name in table:
            where = locate(name) if locate is not None else None
            source = f"{where + ': ' if where else ''}[server] {name} = {table[name]!r}"
        else:
            source = name
        problems.append(f"{source}: {error['msg']}")
    return "invalid server settings: " + "; ".join(problems)


_PROVIDER_HELP = {
    "provider": "openai, anthropic or scripted (unset: scripted, with a warning).",
    "model": "The model name.",
    "base_url": "An OpenAI-compatible server (vLLM, Ollama, llama.cpp) or a proxy.",
    "api_key_env": "The NAME of the environment variable holding the API key (never the key).",
    "timeout_s": "Seconds for each model call.",
    "rpm": "Requests per minute (a token bucket shared by every caller).",
    "tpm": "Tokens per minute.",
    "max_concurrency": "Model calls open at once.",
    "max_attempts": "Attempts of a call that got 429 or 5xx.",
}


def settings_help() -> tuple[list[str], list[str]]:
    """Return one line per server setting and per provider setting: variable, default, what."""
    from corral.providers.settings import ProviderSettings

    server = [
        f"CORRAL_{name.upper()} (default {_shown(field.default)}): {field.description}"
        for name, field in ServerSettings.model_fields.items()
    ]
    provider = [
        f"CORRAL_{name.upper()} (default {_shown(field.default)}): "
        f"{_PROVIDER_HELP.get(name, field.description or '')}"
        for name, field in ProviderSettings.model_fields.items()
    ]
    return server, provider


def _shown(default: object) -> str:
    return "unset" if default is None else str(default)
