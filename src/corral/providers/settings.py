"""Which provider runs, from environment variables and an optional TOML file.

Environment variables (prefix `CORRAL_`) win over the file, which wins over the defaults::

    CORRAL_PROVIDER=openai            # openai | anthropic | scripted
    CORRAL_MODEL=gpt-4.1-mini
    CORRAL_BASE_URL=http://localhost:11434/v1
    CORRAL_API_KEY_ENV=OLLAMA_KEY     # the NAME of the variable holding the key
    CORRAL_RPM=500  CORRAL_TPM=200000  CORRAL_MAX_CONCURRENCY=16
    CORRAL_TRANSPORT=sdk              # streams through the SDK's own request path
    CORRAL_CONFIG=corral.toml         # the file, whose [provider] table has the same keys

The key itself never goes in a file or a setting: only the name of the variable that holds it.
With nothing configured the scripted provider runs, and start-up says so in a WARNING.
"""

from __future__ import annotations

import logging
import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from corral._retry import Backoff
from corral.errors import UsageError

if TYPE_CHECKING:
    from corral.providers._ratelimit import LimiterRegistry
    from corral.providers.base import Provider

__all__ = ["ProviderSettings", "load_settings", "provider_from_settings"]

logger = logging.getLogger(__name__)

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("corral_provider_config_file", default=None)
_DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
_SCRIPTED_WARNING = (
    "No LLM provider is configured: corral runs the SCRIPTED provider, which answers from a "
    "script, not from a model. To use a real one set CORRAL_PROVIDER=openai or anthropic, "
    "CORRAL_MODEL, optionally CORRAL_BASE_URL (vLLM, Ollama, llama.cpp), and "
    "CORRAL_API_KEY_ENV naming the environment variable that holds the key; or put the same "
    "keys in the [provider] table of the file named by CORRAL_CONFIG."
)


class ProviderSettings(BaseSettings):
    """The provider to run and its limits.

    `provider=None` means "not configured": the scripted provider runs, with a warning.
    """

    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="forbid", frozen=True)

    provider: Literal["openai", "anthropic", "scripted"] | None = None
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the API key (never the key).",
    )
    timeout_s: float = Field(default=60.0, gt=0)
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    max_attempts: int = Field(default=4, ge=1)
    transport: Literal["direct", "sdk"] = Field(
        default="direct",
        description="How model streams travel: 'direct' (aiohttp with the SDK client's "
        "headers, a quarter of the CPU) or 'sdk' (the SDK's own request path).",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k.lower() in ("api_key", "key") for k in data):
            raise ValueError(
                "settings must not hold an API key: put the key in an environment variable and "
                "name that variable in api_key_env (CORRAL_API_KEY_ENV)"
            )
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read arguments, then CORRAL_* variables, then the TOML file's [provider] table."""
        del dotenv_settings, file_secret_settings  # no .env files: keys stay in the environment
        return init_settings, env_settings, InitSettingsSource(settings_cls, _file_values())


def _file_values() -> dict[str, Any]:
    path = _CONFIG_FILE.get()
    if path is None:
        named = os.environ.get("CORRAL_CONFIG")
        path = Path(named) if named else None
    if path is None:
        return {}
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError as exc:
        raise UsageError(f"config file {str(path)!r} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
    table = data.get("provider", {})
    if not isinstance(table, dict):
        raise UsageError(f"[provider] in {str(path)!r} must be a table, got {table!r}")
    return table


def load_settings(config_file: str | Path | None = None, **values: Any) -> ProviderSettings:
    """Read the settings: `values`, then CORRAL_* variables, then the file, then defaults.

    Args:
        config_file: A TOML file whose [provider] table holds settings; $CORRAL_CONFIG if None.
        values: Settings given in code, above everything else.

    Raises:
        UsageError: the file is missing or malformed, or a value is invalid (the message
            names it).
    """
    from pydantic import ValidationError

    token = _CONFIG_FILE.set(Path(config_file) if config_file is not None else None)
    try:
        return ProviderSettings(**values)
    except ValidationError as exc:
        raise UsageError(f"invalid provider settings: {exc}") from exc
    finally:
        _CONFIG_FILE.reset(token)


def provider_from_settings(
    settings: ProviderSettings, *, registry: LimiterRegistry | None = None
) -> Provider:
    """Build the configured provider; SDK-backed ones come behind a `LimitedProvider`.

    The SDKs are imported here, only when chosen. With no provider configured this logs a
    WARNING naming how to configure one, and returns the scripted provider.

    Args:
        settings: What to build.
        registry: Where the rate limiters live; the process-wide registry by default, so
            every provider built for the same key shares one budget.

    Raises:
        UsageError: the API key's environment variable is not set (when one is needed).
    """
    kind = settings.provider
    if kind is None or kind == "scripted":
        if kind is None:
            logger.warning(_SCRIPTED_WARNING)
        from corral.providers.scripted import ScriptedProvider

        scripted: Provider = ScriptedProvider()
        return scripted
    api_key = _api_key(settings, kind)
    inner: Provider
    if kind == "openai":
        from corral.providers.openai import OpenAIProvider

        inner = OpenAIProvider(
            base_url=settings.base_url,
            api_key=api_key,
            timeout_s=settings.timeout_s,
            transport=settings.transport,
        )
    else:
        from corral.providers.anthropic import AnthropicProvider

        inner = AnthropicProvider(
            base_url=settings.base_url,
            api_key=api_key,
            timeout_s=settings.timeout_s,
            transport=settings.transport,
        )
    from corral.providers._limited import LimitedProvider
    from corral.providers._ratelimit import RateLimits

    limits = RateLimits(
        rpm=settings.rpm,
        tpm=settings.tpm,
        max_concurrency=settings.max_concurrency,
        backoff=Backoff(attempts=settings.max_attempts),
    )
    logger.info(
        "LLM provider: %s%s%s",
        kind,
        f" model {settings.model!r}" if settings.model else "",
        f" at {settings.base_url}" if settings.base_url else "",
    )
    return LimitedProvider(inner, limits=limits, registry=registry)


def _api_key(settings: ProviderSettings, kind: str) -> str | None:
    env = settings.api_key_env or _DEFAULT_KEY_ENV[kind]
    key = os.environ.get(env)
    if key:
        return key
    if settings.base_url is not None:
        return None  # a local server (vLLM, Ollama, llama.cpp) may need no key
    raise UsageError(
        f"provider {kind!r} needs an API key in the environment variable {env!r}, which is not "
        "set (name another variable with CORRAL_API_KEY_ENV)"
    )
