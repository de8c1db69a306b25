"""The executor interface: where one call's function runs."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from corral.errors import ClosedError, UsageError
from corral.executors._worker import resolve_import

__all__ = [
    "Executor",
    "ExecutorStatistics",
    "FunctionRef",
    "Job",
    "State",
    "ensure_open",
    "future_safe",
]

logger = logging.getLogger(__name__)


class State(enum.Enum):
    """Lifecycle of a resource: pools, registries and managers share it."""

    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


def ensure_open(state: State, what: str) -> None:
    """Raise `ClosedError` naming `what` and its state unless it can take new work."""
    if state in (State.CLOSING, State.CLOSED):
        raise ClosedError(f"{what} is {state.value}; it cannot take new work")


def future_safe(exc: BaseException) -> BaseException:
    """Return `exc`, or a RuntimeError standing for it when passing it on would do harm.

    - StopIteration: `Future.set_exception(StopIteration())` raises TypeError, which would leave
      the caller waiting forever; a coroutine that raised it would have turned it into
      RuntimeError anyway.
    - SystemExit, KeyboardInterrupt: a tool in a thread or worker process that calls
      `sys.exit()` must fail its own call, not stop the event loop of the process that awaits it.
    """
    if isinstance(exc, StopIteration | SystemExit | KeyboardInterrupt):
        error = RuntimeError(f"the tool raised {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error
    return exc


@dataclass(frozen=True, slots=True)
class FunctionRef:
    """How a worker process finds a tool's function without re-pickling it on every call.

    An importable module-level function (or a method of an importable class instance bound by the
    registry) travels as `module:qualname`; anything else (closures, lambdas, functions of
    `__main__`, bound methods) is pickled once with cloudpickle and cached by `key` in each worker.
    """

    key: str
    module: str | None = None
    qualname: str | None = None
    pickled: bytes | None = field(default=None, repr=False)

    @classmethod
    def for_function(cls, fn: Callable[..., Any], key: str) -> FunctionRef:
        """Describe `fn` by import path when that finds the very same object, else by value.

        Raises:
            UsageError: `fn` is neither importable by path nor picklable by value.
        """
        module = getattr(fn, "__module__", None)
        qualname = getattr(fn, "__qualname__", None)
        if module and qualname and module != "__main__" and "<locals>" not in qualname:
            try:
                if resolve_import(module, qualname) is fn:
                    return cls(key=key, module=module, qualname=qualname)
            except (ImportError, AttributeError):
                pass
        import cloudpickle  # imported lazily: only closures and `__main__` functions need it

        logger.debug("tool %s is not importable by path; it travels by value (cloudpickle)", key)
        try:
            pickled = cloudpickle.dumps(fn)
        except Exception as exc:  # e.g. a closure over a lock or a connection
            raise UsageError(
                f"tool {key} cannot run in a worker process: it is not importable by path, "
                f"and pickling it by value failed: {exc}"
            ) from exc
        return cls(key=key, pickled=pickled)


class Job(NamedTuple):
    """One function call for an executor to run.

    A NamedTuple rather than a frozen dataclass: one is built per call, and on a batch of a
    hundred fast tools the frozen dataclass's `__init__` alone cost a measurable share.
    """

    fn: Callable[..., Any]
    kwargs: Mapping[str, Any]
    is_async: bool
    ref: Callable[[], FunctionRef] | None = None
    """Builds the `FunctionRef` (cached by the tool) for executors that cross a process boundary."""


@dataclass(frozen=True, slots=True)
class ExecutorStatistics:
    """What an executor holds right now."""

    name: str
    in_flight: int
    """Calls running, including abandoned threads that have not ended yet."""
    queued: int
    """Calls waiting for a thread or a worker."""
    workers: int = 0
    """Threads or processes alive."""
    replaced_workers: int = 0
    """Worker processes killed or crashed and replaced since start."""


class Executor(Protocol):
    """Runs one job at a time per `run` call; many `run` calls may be in flight at once."""

    name: str

    async def run(self, job: Job) -> Any:
        """Run `job` and return its value; raise what it raised.

        Cancellation stops the call as far as the executor can (a process call's worker is
        killed; a thread that has started cannot be stopped and runs on, counted as in flight).
        """
        ...

    def statistics(self) -> ExecutorStatistics:
        """Return a snapshot of in-flight and queued calls."""
        ...

    async def aclose(self) -> None:
        """Stop taking work and release threads or processes. Idempotent."""
        ...
