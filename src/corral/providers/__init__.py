"""LLM providers: one streaming interface, rate limits and retries shared by every caller."""

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

__all__ = [
    "Completion",
    "Finish",
    "ModelCapabilities",
    "ModelRequest",
    "Provider",
    "ProviderEvent",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallDone",
    "ToolSpec",
    "Usage",
    "complete",
]
