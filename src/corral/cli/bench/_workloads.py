"""What `corral bench tools` runs: the workloads, ToolRegistry's variants, the batches of calls."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from corral.cli.bench import _bench_tools as bt
from corral.errors import UsageError

__all__ = [
    "BATCH_SIZE",
    "WORKLOADS",
    "BenchError",
    "BenchOptions",
    "Kind",
    "Source",
    "Variant",
    "Workload",
    "make_calls",
    "select_workloads",
]

BATCH_SIZE = 100

Kind = Literal["arithmetic", "sleep_blocking", "sleep_async"]
Source = Literal["python", "openapi", "mcp-sse", "mcp-http"]
"""Where the tools live: Python functions in the process, or a calculator server."""


class BenchError(RuntimeError):
    """The benchmark could not run: the peer environment, the peer, a server, or a failing call."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One way of running a batch on ToolRegistry: its sync or async API, in a mode."""

    api: Literal["sync", "async"]
    mode: Literal["thread", "process"] | None

    @property
    def label(self) -> str:
        """Name the API and mode, e.g. `aexecute_tool_calls(thread)`."""
        method = "execute_tool_calls" if self.api == "sync" else "aexecute_tool_calls"
        return f"{method}({self.mode or 'default'})"


@dataclass(frozen=True, slots=True)
class Workload:
    """A batch of 100 calls of one kind, where the tools live, how corral runs it, its target."""

    key: str
    title: str
    kind: Kind
    corral_mode: Literal["thread", "process"] | None
    target_ratio: float
    variants: tuple[Variant, ...]
    ideal_ms: float | None = None
    """If set, corral's median must also be within `ideal_slack` of this."""
    ideal_slack: float = 0.15
    source: Source = "python"

    @property
    def remote(self) -> bool:
        """Whether the tools are served by a calculator server the bench starts."""
        return self.source != "python"

    @property
    def corral_label(self) -> str:
        """Name corral's call, e.g. `execute(mode='thread')`."""
        return f"execute(mode={self.corral_mode!r})" if self.corral_mode else "execute()"

    @property
    def target(self) -> str:
        """Describe the target for the table."""
        text = f">= {self.target_ratio:g}x"
        if self.ideal_ms is not None:
            text += f", corral <= {self.ideal_ms * (1 + self.ideal_slack):.1f} ms"
        return text


_SYNC_THREAD, _ASYNC_THREAD = Variant("sync", "thread"), Variant("async", "thread")
_ASYNC_DEFAULT = Variant("async", None)
_THREAD = (_SYNC_THREAD, _ASYNC_THREAD)
_PROCESS = (Variant("sync", "process"), Variant("async", "process"))
_ASYNC = (_ASYNC_DEFAULT, _ASYNC_THREAD, _SYNC_THREAD)
# Remote tools run on the caller's loop in ToolRegistry's async API (its "inline" backend) and
# in its thread pool in the sync API; "process" falls back to threads for them.
_REMOTE = (_ASYNC_DEFAULT, _SYNC_THREAD)
_IDEAL_MS = bt.SLEEP_S * 1000

WORKLOADS: tuple[Workload, ...] = (
    Workload("arith-thread", "arithmetic, thread", "arithmetic", "thread", 3.0, _THREAD),
    Workload("arith-process", "arithmetic, process", "arithmetic", "process", 3.0, _PROCESS),
    Workload(
        "sleep-thread", "blocking 20 ms sleep, thread", "sleep_blocking", "thread", 10, _THREAD
    ),
    Workload("sleep-async", "async 20 ms sleep", "sleep_async", None, 1.8, _ASYNC, _IDEAL_MS),
    Workload(
        "openapi", "calculator, OpenAPI (GET)", "arithmetic", None, 2.0, _REMOTE, source="openapi"
    ),
    Workload(
        "mcp-sse", "calculator, MCP over SSE", "arithmetic", None, 3.0, _REMOTE, source="mcp-sse"
    ),
    Workload(
        "mcp-http",
        "calculator, MCP streamable HTTP",
        "arithmetic",
        None,
        3.0,
        _REMOTE,
        source="mcp-http",
    ),
)
"""Every workload, in the order they run: four on Python tools, three on calculator servers."""

_GROUPS: dict[str, tuple[str, ...]] = {
    "all": tuple(w.key for w in WORKLOADS),
    "local": tuple(w.key for w in WORKLOADS if not w.remote),
    "remote": tuple(w.key for w in WORKLOADS if w.remote),
    "mcp": ("mcp-sse", "mcp-http"),
}


def select_workloads(spec: str) -> tuple[Workload, ...]:
    """Return the workloads a comma-separated list names, in the order they run.

    Names are workload keys or the groups `all`, `local`, `remote` and `mcp`.

    Raises:
        UsageError: a name is neither a workload nor a group.
    """
    by_key = {w.key: w for w in WORKLOADS}
    chosen: set[str] = set()
    for name in (part.strip() for part in spec.split(",")):
        if not name:
            continue
        if name in _GROUPS:
            chosen.update(_GROUPS[name])
        elif name in by_key:
            chosen.add(name)
        else:
            known = ", ".join([*by_key, *_GROUPS])
            raise UsageError(f"workload {name!r} is not known (known: {known})")
    if not chosen:
        raise UsageError(f"no workload selected by {spec!r}")
    return tuple(w for w in WORKLOADS if w.key in chosen)


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What `corral bench tools` runs; see the command's help."""

    rounds: int = 15
    warmup: int = 3
    peer: bool = True
    json_path: Path | None = None
    bench_dir: Path | None = None
    seed: int = 0
    max_seconds: float = 600.0
    workloads: tuple[Workload, ...] = WORKLOADS


def make_calls(kind: Kind, rng: random.Random, *, size: int = BATCH_SIZE) -> list[dict[str, Any]]:
    """Return `size` OpenAI `tool_calls` entries of one workload kind, drawn from `rng`."""
    calls: list[dict[str, Any]] = []
    for index in range(size):
        args: dict[str, Any]
        if kind == "arithmetic":
            name = rng.choice(bt.ARITHMETIC).__name__
            args = {"a": round(rng.uniform(-1000, 1000), 3), "b": round(rng.uniform(1, 100), 3)}
        else:
            fn = bt.sleep_blocking if kind == "sleep_blocking" else bt.sleep_async
            name = fn.__name__
            args = {"tag": index}
        calls.append(
            {
                "id": f"call_{index}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
        )
    return calls
