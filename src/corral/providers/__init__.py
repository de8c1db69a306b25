"""LLM providers: one streaming interface, rate limits and retries shared by every caller.

`OpenAIProvider` and `AnthropicProvider` are imported on first use, so their SDKs stay optional
extras (`pip install corral[openai]`, `corral[anthropic]`); the settings too, to keep
`import corral` quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral.providers._capabilities import CapabilityTable
from corral.providers._fleet import RedisFleet
from corral.providers._limited import LimitedProvider
from corral.providers._ratelimit import (
    Fleet,
    LimiterRegistry,
    LimiterStatistics,
    RateLimiter,
    RateLimits,
    default_registry,
)
from corral.providers.base import (
    Completion,
    Finish,
    ModelCapabilities,
    ModelRequest,
    Provider,
    ProviderEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallDone,
    ToolSpec,
    Usage,
    complete,
)

if TYPE_CHECKING:
    from corral.providers.anthropic import AnthropicProvider
    from corral.providers.openai import OpenAIProvider
    from corral.providers.settings import ProviderSettings, load_settings, provider_from_settings

__all__ = [
    "AnthropicProvider",
    "CapabilityTable",
    "Completion",
    "Finish",
    "Fleet",
    "LimitedProvider",
    "LimiterRegistry",
    "LimiterStatistics",
    "ModelCapabilities",
    "ModelRequest",
    "OpenAIProvider",
    "Provider",
    "ProviderEvent",
    "ProviderSettings",
    "RateLimiter",
    "RateLimits",
    "RedisFleet",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallDone",
    "ToolSpec",
    "Usage",
    "complete",
    "default_registry",
    "load_settings",
    "provider_from_settings",
]

_LAZY = {
    "AnthropicProvider": "corral.providers.anthropic",
    "OpenAIProvider": "corral.providers.openai",
    "ProviderSettings": "corral.providers.settings",
    "load_settings": "corral.providers.settings",
    "provider_from_settings": "corral.providers.settings",
}


def __getattr__(name: str) -> Any:
    """Import the SDK-backed providers and the settings (pydantic-settings) on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'corral.providers' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
