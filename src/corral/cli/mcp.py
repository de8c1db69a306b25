"""`corral mcp serve`: serve a registry's tools over MCP (stdio or streamable HTTP).

`--tools` names what to serve as `package.module:attribute`, repeatable:

- a `ToolRegistry`: served as it is;
- a function with no required parameters annotated to return a `ToolRegistry` (plain or
  `async def`, so it may await `register_mcp` and re-serve remote tools): called, and its
  registry served;
- any other function: registered as a tool (into the one registry named, or a new one).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import typer

from corral import ToolRegistry, UsageError
from corral.mcp_server import serve_registry

__all__ = ["ServeError", "ServeOptions", "load_registry", "run_serve"]


class ServeError(Exception):
    """What to tell the user when `corral mcp serve` cannot start."""


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """The options of `corral mcp serve`."""

    tools: tuple[str, ...]
    transport: Literal["stdio", "http"] = "stdio"
    host: str = "127.0.0.1"
    port: int = 8765
    path: str = "/mcp"
    app_dir: str | None = "."
    """Put on `sys.path` first, so modules of the current directory import (as uvicorn does)."""


def run_serve(options: ServeOptions) -> None:
    """Load the registry and serve it until stdin closes (stdio) or Ctrl-C (http)."""
    if options.app_dir is not None:
        sys.path.insert(0, os.path.abspath(options.app_dir))
    try:
        asyncio.run(_serve(options))
    except KeyboardInterrupt:  # Ctrl-C over stdio: the registry was closed on the way out
        pass


async def _serve(options: ServeOptions) -> None:
    reg = await load_registry(options.tools)
    try:
        where = (
            "stdio"
            if options.transport == "stdio"
            else f"http://{options.host}:{options.port}{options.path}"
        )
        # stderr: over stdio, stdout is the protocol's.
        typer.echo(f"corral mcp: serving {len(reg)} tools over {where}", err=True)
        await serve_registry(
            reg,
            transport=options.transport,
            host=options.host,
            port=options.port,
            path=options.path,
        )
    finally:
        await reg.aclose()


async def load_registry(refs: Sequence[str]) -> ToolRegistry:
    """Resolve `module:attribute` references into the one registry to serve.

    Raises:
        ServeError: a reference does not import or resolve, or names more than one registry.
    """
    if not refs:
        raise ServeError("name at least one registry or function with --tools module:attribute")
    registries: list[ToolRegistry] = []
    functions: list[Any] = []
    for ref in refs:
        obj = _resolve(ref)
        if isinstance(obj, ToolRegistry):
            registries.append(obj)
        elif callable(obj) and _is_factory(obj):
            made = obj()
            if inspect.isawaitable(made):
                made = await made
            if not isinstance(made, ToolRegistry):
                raise ServeError(f"{ref} returned {type(made).__name__}, not a ToolRegistry")
            registries.append(made)
        elif callable(obj):
            functions.append(obj)
        else:
            raise ServeError(
                f"{ref} is a {type(obj).__name__}: name a ToolRegistry, a function returning "
                f"one, or a tool function"
            )
    if len(registries) > 1:
        raise ServeError(f"--tools names {len(registries)} registries; serve one at a time")
    reg = registries[0] if registries else ToolRegistry()
    for fn in functions:
        try:
            reg.register(fn)
        except UsageError as exc:
            raise ServeError(f"cannot register {fn!r}: {exc}") from None
    return reg


def _resolve(ref: str) -> Any:
    module_name, sep, attribute = ref.partition(":")
    if not sep or not module_name or not attribute:
        raise ServeError(f"--tools {ref!r} must look like package.module:attribute")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ServeError(f"cannot import {module_name!r} (from --tools {ref!r}): {exc}") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ServeError(f"{module_name!r} has no attribute {attribute!r}") from None
    return obj


def _is_factory(fn: Any) -> bool:
    """Whether `fn` makes a registry: no required parameters, annotated to return one."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    required = [
        p
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    returns = signature.return_annotation
    if isinstance(returns, str):  # postponed annotations: compare by name
        return not required and returns.rsplit(".", 1)[-1] == "ToolRegistry"
    return not required and isinstance(returns, type) and issubclass(returns, ToolRegistry)
