"""Turn the calls of one batch into runnable (or already failed) calls and their plan items."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral._types import Mode, RegistryMode
from corral.errors import ToolArgumentsInvalid
from corral.executors.base import Executor, Job
from corral.scheduler import Budget, ErrorInfo, PlanItem, Prepared
from corral.tools._calls import RawCall
from corral.tools._resources import normalize_path_arguments
from corral.tools._tool import Tool, ToolContext

__all__ = ["BatchOptions", "prepare"]


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """What the registry and the caller decide for a whole batch."""

    tools: Mapping[str, Tool]
    registry_mode: RegistryMode
    batch_mode: Mode | None
    independent: bool
    cwd: str
    context: Mapping[str, Any]
    executor: Callable[[Mode], Executor]
    budgets: Callable[[Tool], tuple[Budget, ...]]


def prepare(
    calls: Sequence[RawCall], options: BatchOptions
) -> tuple[list[Prepared], list[PlanItem]]:
    """Check every call; a bad one becomes a failed `Prepared` that never runs its tool."""
    counts = Counter(call.id for call in calls)
    unique = len(counts) == len(calls)
    budgets: dict[str, tuple[Budget, ...]] = {}
    prepared: list[Prepared] = []
    items: list[PlanItem] = []
    for call in calls:
        if not unique and counts[call.id] > 1:
            positions = [str(i) for i, c in enumerate(calls) if c.id == call.id]
            error = ErrorInfo(
                "DuplicateCallId",
                f"call id {call.id!r} is used by {counts[call.id]} calls (positions "
                f"{', '.join(positions)}); ids must be unique within a batch",
            )
            prepared.append(Prepared(call.id, call.name, error=error))
            items.append(PlanItem(call.id, (), call.depends_on))
            continue
        one, claims = _prepare_one(call, options, budgets)
        prepared.append(one)
        items.append(PlanItem(call.id, claims, call.depends_on))
    return prepared, items


def _prepare_one(
    call: RawCall, options: BatchOptions, budgets: dict[str, tuple[Budget, ...]]
) -> tuple[Prepared, tuple[Any, ...]]:
    tool = options.tools.get(call.name)
    if tool is None:
        return _failed(call, "ToolNotFound", _not_found(call.name, options.tools)), ()
    try:
        kwargs = _validate(call, tool)
    except ToolArgumentsInvalid as exc:
        return _failed(call, "ToolArgumentsInvalid", str(exc)), ()
    if tool.path_params:
        normalize_path_arguments(kwargs, tool.path_params, options.cwd)
    try:
        claims = tool.claims(kwargs, options.cwd, independent=options.independent)
    except (KeyError, AttributeError, IndexError, TypeError, ValueError) as exc:
        message = f"cannot work out the resources call {call.id!r} touches: {exc!r}"
        return _failed(call, "ToolArgumentsInvalid", message), ()
    if tool.context_param is not None:
        kwargs[tool.context_param] = ToolContext(
            call.id, tool.name, Path(options.cwd), options.context
        )
    mode = _mode(call, tool, options)
    executor = options.executor(mode)
    timeout: float | None
    if call.timeout is not None:
        timeout, source = call.timeout, "call timeout"
    else:
        timeout, source = tool.timeout_s, "tool timeout"
    job = Job(tool.fn, kwargs, tool.is_async, tool.function_ref if mode == "process" else None)
    held = budgets.get(tool.name)
    if held is None:
        held = budgets[tool.name] = options.budgets(tool)
    # Positional: this runs once per call, and keyword arguments cost more.
    return Prepared(call.id, tool.name, job, executor, timeout, source, held), claims


def _validate(call: RawCall, tool: Tool) -> dict[str, Any]:
    raw = call.arguments
    if raw.__class__ is str and tool.validate_json is not None:
        try:
            return tool.validate_json(raw)
        except ToolArgumentsInvalid:
            pass  # say exactly what is wrong: malformed JSON, not an object, or which argument
    return tool.validate(_arguments(call))


def _mode(call: RawCall, tool: Tool, options: BatchOptions) -> Mode:
    if not tool.process_capable:
        # Remote tools hold a connection that lives on the registry's loop: no mode override
        # can move them to a thread's loop or another process.
        return "async"
    natural: Mode = "async" if tool.is_async else "thread"
    return (
        call.mode
        or options.batch_mode
        or tool.mode
        or (options.registry_mode if options.registry_mode != "auto" else None)
        or natural
    )


def _arguments(call: RawCall) -> Mapping[str, Any]:
    raw = call.arguments
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            raise ToolArgumentsInvalid(
                f"arguments of call {call.id!r} to tool {call.name!r} are not valid JSON: {exc} "
                f"(got {_clip(call.arguments)!r})"
            ) from None
    if not isinstance(raw, Mapping):
        raise ToolArgumentsInvalid(
            f"arguments of call {call.id!r} to tool {call.name!r} must be a JSON object, "
            f"got {type(raw).__name__}"
        )
    return raw


def _failed(call: RawCall, kind: str, message: str) -> Prepared:
    return Prepared(call.id, call.name, error=ErrorInfo(kind, message))


def _not_found(name: str, tools: Mapping[str, Tool]) -> str:
    known = sorted(tools)
    shown = ", ".join(known[:20]) + (f", ... ({len(known)} in all)" if len(known) > 20 else "")
    return f"tool {name!r} is not registered (known: {shown or 'none'})"


def _clip(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
