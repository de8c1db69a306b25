"""Tools from Python functions and classes: schema from type hints and docstrings (pydantic)."""

from __future__ import annotations

import inspect
import os
import sys
import types
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import docstring_parser
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from corral._types import Mode
from corral.errors import ToolArgumentsInvalid, UsageError
from corral.tools._resources import file_fields, templates
from corral.tools._tool import Tool, ToolContext, check_mode, check_name

__all__ = ["ToolOptions", "build_tool", "class_methods", "tool"]

_MARK = "__corral_tool__"


@dataclass(frozen=True, slots=True)
class ToolOptions:
    """Registration options, as given to `register`, `@reg.tool` or the `@corral.tool` marker."""

    name: str | None = None
    description: str | None = None
    read_only: bool = False
    reads: str | Sequence[str] = ()
    writes: str | Sequence[str] = ()
    mode: Mode | None = None
    timeout: float | None = None
    limit: int | str | None = None


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    read_only: bool = False,
    reads: str | Sequence[str] = (),
    writes: str | Sequence[str] = (),
    mode: Mode | None = None,
    timeout: float | None = None,
    limit: int | str | None = None,
) -> Any:
    """Mark a function or method with tool options, for `register` and `register_class` to read.

    Usable bare (`@corral.tool`) or with options (`@corral.tool(read_only=True)`).
    """
    options = ToolOptions(name, description, read_only, reads, writes, mode, timeout, limit)

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        target = f.__func__ if isinstance(f, staticmethod | classmethod) else f
        setattr(target, _MARK, options)
        return f

    return mark(fn) if fn is not None else mark


def marked_options(fn: Callable[..., Any]) -> ToolOptions | None:
    """Return the options `@corral.tool` attached to `fn`, if any."""
    target = getattr(fn, "__func__", fn)
    options = getattr(target, _MARK, None)
    return options if isinstance(options, ToolOptions) else None


def build_tool(fn: Callable[..., Any], options: ToolOptions) -> Tool:
    """Build a `Tool` from `fn`: check the options, derive the schema and the validator."""
    if not callable(fn):
        raise UsageError(f"a tool must be callable, got {fn!r}")
    name = check_name(options.name or _default_name(fn))
    mode = check_mode(options.mode, f"mode of tool {name!r}")
    _check_options(name, options)
    fields, path_params, context_param = _parameters(fn, name)
    model = _model(name, fields)
    params = list(fields)
    reads = templates(options.reads, write=False, params=params, tool=name)
    writes = templates(options.writes, write=True, params=params, tool=name)
    if path_params and not (reads or writes):
        spec = [f"file:{{{p}}}" for p in path_params]
        if options.read_only:
            reads = templates(spec, write=False, params=params, tool=name)
        else:
            writes = templates(spec, write=True, params=params, tool=name)
    if options.description:
        description = options.description
    else:
        doc = docstring_parser.parse(inspect.getdoc(fn) or "")
        description = "\n\n".join(p for p in (doc.short_description, doc.long_description) if p)
    return Tool(
        name=name,
        description=description,
        parameters=_schema(model, name),
        fn=fn,
        is_async=_is_async(fn),
        validate=_validator(model, name),
        validate_json=_json_validator(model, name),
        read_only=options.read_only,
        reads=reads,
        writes=writes,
        # Path-typed parameters, and those a `file:` template names: both are resolved against
        # the cwd before the tool sees them, so the tool opens the file the scheduler ordered.
        path_params=tuple(dict.fromkeys([*path_params, *file_fields((*reads, *writes))])),
        mode=mode,
        timeout_s=float(options.timeout) if options.timeout is not None else None,
        limit=options.limit,
        context_param=context_param,
    )


def _check_options(name: str, options: ToolOptions) -> None:
    timeout, limit = options.timeout, options.limit
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise UsageError(
            f"timeout of tool {name!r} must be a positive number of seconds, got {timeout!r}"
        )
    positive_int = isinstance(limit, int) and not isinstance(limit, bool) and limit > 0
    if limit is not None and not (positive_int or (isinstance(limit, str) and limit)):
        raise UsageError(
            f"limit of tool {name!r} must be a positive integer or a budget name, got {limit!r}"
        )
    if options.read_only and options.writes:
        raise UsageError(f"tool {name!r} is read_only but declares writes={options.writes!r}")


def _parameters(fn: Callable[..., Any], name: str) -> tuple[dict[str, Any], list[str], str | None]:
    """Return the argument model's fields, the path-typed parameters and the context parameter."""
    signature = _signature(fn, name)
    hints = _hints(fn, name)
    doc = docstring_parser.parse(inspect.getdoc(fn) or "")
    param_docs = {p.arg_name: p.description or "" for p in doc.params}
    fields: dict[str, Any] = {}
    path_params: list[str] = []
    context_param: str | None = None
    for param in signature.parameters.values():
        annotation = hints.get(param.name, Any)
        if _is_context(annotation):
            context_param = param.name
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise UsageError(
                f"tool {name!r}: parameter {param.name!r} is variadic; declare each argument"
            )
        if param.kind is param.POSITIONAL_ONLY:
            raise UsageError(
                f"tool {name!r}: parameter {param.name!r} is positional-only; "
                "tools are called with keyword arguments"
            )
        if _is_path(annotation):
            path_params.append(param.name)
        default = ... if param.default is param.empty else param.default
        described = param_docs.get(param.name)
        fields[param.name] = (
            annotation,
            Field(default, description=described) if described else default,
        )
    return fields, path_params, context_param


def class_methods(obj: object) -> list[tuple[str, Callable[..., Any]]]:
    """Return the public methods of `obj` (an instance), as bound callables, in definition order."""
    out: list[tuple[str, Callable[..., Any]]] = []
    seen: set[str] = set()
    for klass in type(obj).__mro__:
        if klass is object:
            continue
        for attr, raw in vars(klass).items():
            if attr.startswith("_") or attr in seen:
                continue
            seen.add(attr)
            if isinstance(raw, property) or not (
                inspect.isfunction(raw) or isinstance(raw, staticmethod | classmethod)
            ):
                continue
            out.append((attr, getattr(obj, attr)))
    return out


def _default_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return str(name)


def _signature(fn: Callable[..., Any], name: str) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"tool {name!r}: cannot read the signature of {fn!r}: {exc}") from None


def _hints(fn: Callable[..., Any], name: str) -> dict[str, Any]:
    target = fn
    if not (inspect.isfunction(fn) or inspect.ismethod(fn)) and callable(fn):
        target = getattr(fn, "func", None) or type(fn).__call__  # partials, callable objects
    try:
        return typing.get_type_hints(target, include_extras=True)
    except NameError:
        # A tool defined inside a function whose hints name local classes (common with
        # `from __future__ import annotations`): resolve them in the registering caller's frame.
        pass
    except Exception as exc:
        raise UsageError(f"tool {name!r}: cannot resolve its type hints: {exc}") from None
    try:
        return typing.get_type_hints(target, localns=_caller_locals(), include_extras=True)
    except Exception as exc:
        raise UsageError(f"tool {name!r}: cannot resolve its type hints: {exc}") from None


def _caller_locals() -> dict[str, Any]:
    """Return the local names of the nearest frame outside corral."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("corral."):
        frame = frame.f_back  # type: ignore[assignment]
    return dict(frame.f_locals) if frame is not None else {}


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isfunction(fn) or inspect.ismethod(fn):
        return False
    return inspect.iscoroutinefunction(type(fn).__call__)


def _unwrap(annotation: Any) -> list[Any]:
    """Return the plain types inside Annotated, Optional, unions and list/tuple/set."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, set, frozenset, Sequence):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _is_path(annotation: Any) -> bool:
    return any(
        isinstance(t, type) and (issubclass(t, PurePath) or t is os.PathLike)
        for t in _unwrap(annotation)
    )


def _is_context(annotation: Any) -> bool:
    return any(t is ToolContext for t in _unwrap(annotation))


def _model(name: str, fields: Mapping[str, Any]) -> type[BaseModel]:
    # Tool parameters may be called `json`, `keys` or `model_name`: names BaseModel uses. They
    # work as fields (values are read from `__dict__`), so the shadowing warnings are noise here.
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*shadows an attribute", category=UserWarning
            )
            return pydantic.create_model(f"{name}_arguments", __config__=config, **fields)
    except (pydantic.PydanticSchemaGenerationError, TypeError, NameError) as exc:
        raise UsageError(f"tool {name!r}: cannot build an argument model: {exc}") from None


def _schema(model: type[BaseModel], name: str) -> dict[str, Any]:
    try:
        schema = model.model_json_schema()
    except pydantic.PydanticInvalidForJsonSchema as exc:
        raise UsageError(f"tool {name!r}: an argument type has no JSON schema: {exc}") from None
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    schema.setdefault("properties", {})
    return schema


def _validator(model: type[BaseModel], name: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    def validate(arguments: Mapping[str, Any]) -> dict[str, Any]:
        try:
            instance = model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            raise ToolArgumentsInvalid(describe_validation_error(name, exc)) from None
        return dict(instance.__dict__)

    return validate


def _json_validator(model: type[BaseModel], name: str) -> Callable[[str], dict[str, Any]]:
    validator = model.__pydantic_validator__

    def validate_json(text: str) -> dict[str, Any]:
        try:
            return dict(validator.validate_json(text).__dict__)
        except pydantic.ValidationError as exc:
            raise ToolArgumentsInvalid(describe_validation_error(name, exc)) from None

    return validate_json


def describe_validation_error(name: str, exc: pydantic.ValidationError) -> str:
    """Return one line naming every bad argument: what was wrong and what was given."""
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        kind = error["type"]
        if kind == "missing":
            problems.append(f"{where}: missing required argument")
        elif kind == "extra_forbidden":
            problems.append(f"{where}: unexpected argument")
        else:
            problems.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
    return f"invalid arguments for tool {name!r}: " + "; ".join(problems)
