"""What each model accepts: a table of glob patterns per provider, overridable per provider.

The table matters for one field above all: OpenAI's reasoning models (o1, o3, o4, gpt-5...) ignore
`parallel_tool_calls` or answer 400 when it is set explicitly, so it is never sent to them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

from corral.providers.base import ModelCapabilities

__all__ = ["CapabilityTable", "is_reasoning_model"]

_DEFAULT = ModelCapabilities()
_NO_PARALLEL_FLAG = ModelCapabilities(parallel_tool_calls=False)

# Reasoning models of the OpenAI family, by name. Matched against the last path segment of the
# model name too, so routers' names such as "openai/o3-mini" match.
_REASONING_PATTERNS = ("o1*", "o3*", "o4*", "gpt-5*")

_BUILTIN: dict[str, tuple[tuple[str, ModelCapabilities], ...]] = {
    "openai": tuple((pattern, _NO_PARALLEL_FLAG) for pattern in _REASONING_PATTERNS),
    # Anthropic has no `parallel_tool_calls` field; its switch is
    # `tool_choice.disable_parallel_tool_use`, which every tool-using model accepts.
    "anthropic": (),
}


def is_reasoning_model(model: str) -> bool:
    """Whether `model` is an OpenAI reasoning model (they take `max_completion_tokens`)."""
    return any(_matches(model, pattern) for pattern in _REASONING_PATTERNS)


def _matches(model: str, pattern: str) -> bool:
    name = model.lower()
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(
        name.rsplit("/", 1)[-1], pattern
    )


class CapabilityTable:
    """Capabilities of models by name: caller overrides first, then the built-in table.

    Args:
        family: Which built-in table applies ("openai", "anthropic"); others start empty.
        overrides: Glob pattern (case-insensitive, e.g. "o3*", "my-local-model") to capabilities;
            the first matching pattern wins, in the mapping's order, before the built-in rows.
    """

    __slots__ = ("_rows",)

    def __init__(
        self, family: str, overrides: Mapping[str, ModelCapabilities] | None = None
    ) -> None:
        rows = [(pattern.lower(), caps) for pattern, caps in (overrides or {}).items()]
        rows.extend(_BUILTIN.get(family, ()))
        self._rows = tuple(rows)

    def lookup(self, model: str) -> ModelCapabilities:
        """Return the capabilities of `model`: the first matching row, or the defaults."""
        for pattern, caps in self._rows:
            if _matches(model, pattern):
                return caps
        return _DEFAULT
