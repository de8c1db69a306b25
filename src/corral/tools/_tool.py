"""A registered tool: its schema, how its arguments are checked, what it touches, where it runs."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral._types import Mode
from corral.errors import UsageError
from corral.executors.base import FunctionRef
from corral.scheduler import EXCLUSIVE_RESOURCE, Claim
from corral.tools._resources import ResourceTemplate

__all__ = ["Tool", "ToolContext", "check_name", "check_mode"]

_SERIAL = itertools.count(1)
_EXCLUSIVE = (Claim(EXCLUSIVE_RESOURCE, write=True),)
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MODES = ("async", "thread", "process")


def check_name(name: str) -> str:
    """Return `name` if providers accept it as a tool name, else raise `UsageError`."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(
            f"tool name {name!r} is not valid: use 1 to 64 letters, digits, '_' or '-'"
        )
    return name


def check_mode(mode: str | None, what: str) -> Mode | None:
    """Return `mode` if it names an execution mode (or is None), else raise `UsageError`."""
    if mode is None or mode in _MODES:
        return mode  # type: ignore[return-value]
    raise UsageError(f"{what} must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may ask for by annotating a parameter with this type; never in its schema."""

    call_id: str
    tool: str
    cwd: Path
    extras: Mapping[str, Any] = field(default_factory=dict)
    """Whatever the caller passed as `execute(..., context=...)`: a session id, a user, a store."""


@dataclass(frozen=True, slots=True, eq=False)
class Tool:
    """One tool: schema, argument validation, resource claims and execution options.

    Built by `ToolRegistry.register` (Python functions) and by the remote sources; users read it,
    they do not construct it.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]
    is_async: bool
    validate: Callable[[Mapping[str, Any]], dict[str, Any]] = field(repr=False)
    validate_json: Callable[[str], dict[str, Any]] | None = field(default=None, repr=False)
    """Parse and validate JSON text in one pass (faster); raises `ToolArgumentsInvalid`. When it
    fails, the batch re-checks the slow way for the clearest message."""
    read_only: bool = False
    reads: tuple[ResourceTemplate, ...] = ()
    writes: tuple[ResourceTemplate, ...] = ()
    path_params: tuple[str, ...] = ()
    """Parameters holding paths (typed as paths, or named in a `file:` template)."""
    claims_fn: Callable[[Mapping[str, Any], str], list[Claim]] | None = field(
        default=None, repr=False
    )
    """A source's own claim rule (OpenAPI: method and URL path); replaces the templates."""
    mode: Mode | None = None
    timeout_s: float | None = None
    limit: int | str | None = None
    context_param: str | None = None
    process_capable: bool = True
    """False for tools bound to the registry's event loop (remote tools holding a connection):
    they always run on the loop, whatever mode a batch or call asks for."""
    source: str = "python"
    _ref: list[FunctionRef] = field(default_factory=list, repr=False)

    @property
    def declared(self) -> bool:
        """Whether the tool says what it touches (read-only, templates, path parameters)."""
        return bool(
            self.read_only or self.reads or self.writes or self.path_params or self.claims_fn
        )

    def claims(
        self, arguments: Mapping[str, Any], cwd: str, *, independent: bool
    ) -> tuple[Claim, ...]:
        """Return the resources one call touches; undeclared tools claim the exclusive resource."""
        if self.claims_fn is not None:
            return tuple(self.claims_fn(arguments, cwd))
        if not self.reads and not self.writes:  # path parameters always made templates
            return () if self.read_only or independent else _EXCLUSIVE
        claims: list[Claim] = []
        for template in self.reads:
            claims.extend(template.claims(arguments, cwd))
        for template in self.writes:
            claims.extend(template.claims(arguments, cwd))
        return tuple(claims)

    def function_ref(self) -> FunctionRef:
        """Return how a worker process finds this tool's function (computed once)."""
        if not self._ref:
            # A process-wide serial, not id(fn): ids are reused after garbage collection, and a
            # worker would run the old function it cached under the same key.
            self._ref.append(FunctionRef.for_function(self.fn, f"{self.name}@{next(_SERIAL)}"))
        return self._ref[0]

    def to_openai(self) -> dict[str, Any]:
        """Return the OpenAI chat `tools` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def to_anthropic(self) -> dict[str, Any]:
        """Return the Anthropic `tools` entry."""
        return {"name": self.name, "description": self.description, "input_schema": self.parameters}
