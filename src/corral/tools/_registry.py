"""`ToolRegistry`: register tools, then run the tool calls of a model message as one batch."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from corral._retry import Backoff
from corral._types import AsyncResource, Mode, RegistryMode
from corral.errors import UsageError
from corral.executors.base import Executor, ExecutorStatistics, State, ensure_open
from corral.executors.inline import InlineExecutor
from corral.executors.process import ProcessExecutor
from corral.executors.thread import ThreadExecutor
from corral.scheduler import (
    BatchCounters,
    Budget,
    BudgetStatistics,
    Plan,
    Policy,
    Prepared,
    ToolResult,
    ToolResults,
    make_plan,
    run_batch,
)
from corral.tools._calls import RawCall, parse_calls
from corral.tools._home import Home, call_in, proxy
from corral.tools._prepare import BatchOptions, prepare
from corral.tools._python import ToolOptions, build_tool, class_methods, marked_options
from corral.tools._tool import Tool, check_mode

__all__ = ["RegistryStatistics", "SupportsAclose", "ToolRegistry"]

_REGISTRY_MODES = ("auto", "async", "thread", "process")


class SupportsAclose(Protocol):
    """Anything with an idempotent `aclose()`: a remote service's client, an MCP session."""

    async def aclose(self) -> None:
        """Release the resource."""
        ...


@dataclass(frozen=True, slots=True)
class RegistryStatistics:
    """Calls in flight and queued, in total, per executor and per budget."""

    in_flight: int
    """Calls running in an executor, including abandoned threads that have not ended."""
    queued: int
    """Calls admitted in a batch that have not started: waiting for a predecessor, a budget slot,
    a thread or a worker."""
    executors: Mapping[str, ExecutorStatistics] = field(default_factory=dict)
    budgets: Mapping[str, BudgetStatistics] = field(default_factory=dict)

    @property
    def idle(self) -> bool:
        """Whether nothing runs or waits and every budget slot is free."""
        return (
            self.in_flight == 0
            and self.queued == 0
            and all(b.in_use == 0 and b.waiting == 0 for b in self.budgets.values())
        )


class ToolRegistry(AsyncResource):
    """Tools, and the scheduler that runs a model message's tool calls at once by resource.

    Args:
        mode: Where calls run: "auto" (async tools on the loop, plain functions in threads,
            tools registered with mode="process" in worker processes), or "async", "thread",
            "process" for every tool without a mode of its own.
        assume: "declared" (tools that declare nothing run one at a time among themselves) or
            "independent" (they run in parallel with everything).
        cwd: Directory relative paths in arguments are resolved against. Defaults to the current
            working directory when the registry is made.
        thread_pool_size: Most threads for blocking tools.
        process_pool_size: Worker processes; defaults to the number of CPUs.
        max_concurrency: Cap on calls running at once across all batches, or None.

    A registry binds to the first event loop that runs a batch; use it from that loop (callers on
    other loops are proxied to it) or through `execute_sync`. Close it with `aclose()` or `async
    with`.
    """

    def __init__(
        self,
        *,
        mode: RegistryMode = "auto",
        assume: Literal["declared", "independent"] = "declared",
        cwd: str | os.PathLike[str] | None = None,
        thread_pool_size: int = 128,
        process_pool_size: int | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        if mode not in _REGISTRY_MODES:
            raise UsageError(
                f"mode must be one of {', '.join(map(repr, _REGISTRY_MODES))}, got {mode!r}"
            )
        if assume not in ("declared", "independent"):
            raise UsageError(f"assume must be 'declared' or 'independent', got {assume!r}")
        self._mode: RegistryMode = mode
        self._independent = assume == "independent"
        self._cwd = os.path.abspath(cwd if cwd is not None else os.getcwd())
        self._thread_pool_size = thread_pool_size
        self._process_pool_size = process_pool_size
        self._tools: dict[str, Tool] = {}
        self._budgets: dict[str, Budget] = {}
        self._global_budget = (
            Budget("max_concurrency", max_concurrency) if max_concurrency is not None else None
        )
        self._executors: dict[str, Executor] = {}
        self._sources: list[SupportsAclose] = []
        self._counters = BatchCounters()
        self._state = State.NEW
        self._home = Home()

    # -- registration --------------------------------------------------------------------------

    def register(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        read_only: bool = False,
        reads: str | Sequence[str] = (),
        writes: str | Sequence[str] = (),
        mode: Mode | None = None,
        timeout: float | None = None,
        limit: int | str | None = None,
    ) -> Tool:
        """Register `fn` as a tool and return it.

        Args:
            fn: A function, `async def` function, or callable object.
            name: Tool name (letters, digits, `_`, `-`; at most 64); defaults to `fn.__name__`.
            description: Defaults to the docstring.
            read_only: The tool changes nothing: it runs beside everything.
            reads: Resource templates it reads, e.g. "memory:{key}".
            writes: Resource templates it writes, e.g. "file:{path}".
            mode: "async", "thread" or "process"; overrides the registry's mode.
            timeout: Seconds a call may run.
            limit: Most calls of this tool at once (an int), or the name of a shared budget
                sized with `set_limit`.

        Raises:
            UsageError: a bad name, option, template or signature; the message names it.
        """
        marked = marked_options(fn)
        options = ToolOptions(
            name=name or (marked.name if marked else None),
            description=description or (marked.description if marked else None),
            read_only=read_only or (marked.read_only if marked else False),
            reads=reads or (marked.reads if marked else ()),
            writes=writes or (marked.writes if marked else ()),
            mode=mode or (marked.mode if marked else None),
            timeout=timeout if timeout is not None else (marked.timeout if marked else None),
            limit=limit if limit is not None else (marked.limit if marked else None),
        )
        return self.add(build_tool(fn, options))

    def tool(self, fn: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Register the decorated function; usable bare or with `register`'s options."""
        if fn is not None:
            self.register(fn, **options)
            return fn

        def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
            self.register(f, **options)
            return f

        return decorate

    def register_class(
        self, cls: type | object, *, namespace: str | None = None, **options: Any
    ) -> list[Tool]:
        """Register the public methods of a class (instantiated with no arguments) or instance.

        Tools are named `f"{namespace}-{method}"`; `namespace` defaults to the class name.
        Options apply to every method; `@corral.tool(...)` on a method overrides them.
        """
        if isinstance(cls, type):
            try:
                obj = cls()
            except TypeError as exc:
                raise UsageError(
                    f"register_class({cls.__name__}) needs an instance: the class cannot be "
                    f"made with no arguments ({exc})"
                ) from None
        else:
            obj = cls
        prefix = namespace or type(obj).__name__
        methods = class_methods(obj)
        if not methods:
            raise UsageError(f"{type(obj).__name__} has no public methods to register")
        names = [f"{prefix}-{attr}" for attr, _ in methods]
        taken = [n for n in names if n in self._tools]
        if taken:
            raise UsageError(f"tools {', '.join(map(repr, taken))} are already registered")
        tools: list[Tool] = []
        for (_, method), tool_name in zip(methods, names, strict=True):
            marked = marked_options(method)
            merged = {**options, **({} if marked is None else _explicit(marked))}
            merged["name"] = tool_name
            tools.append(self.register(method, **merged))
        return tools

    async def register_openapi(
        self,
        spec: str | os.PathLike[str] | Mapping[str, Any],
        *,
        base_url: str | None = None,
        namespace: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        backoff: Backoff | None = None,
        max_connections: int = 10,
    ) -> list[Tool]:
        """Register every operation of an OpenAPI 3.0/3.1 document as a tool.

        Args:
            spec: A URL, a file path (JSON or YAML) or the document as a dict.
            base_url: Where the service runs; defaults to the document's first server.
            namespace: Prefix for tool names (`f"{namespace}-{operationId}"`).
            headers: Sent with every request (auth, for instance).
            timeout: Seconds for each HTTP request.
            backoff: Retry timing for idempotent requests (429, 502-504, connection failures).
            max_connections: Size of the service's connection pool (kept alive); calls beyond
                it wait, first come first served.

        Calls share one `httpx.AsyncClient` per service (keep-alive, bounded pool), closed by
        `aclose()`.
        """
        from corral.tools._openapi import register_openapi

        return await register_openapi(
            self,
            spec,
            base_url=base_url,
            namespace=namespace,
            headers=headers,
            timeout=timeout,
            backoff=backoff,
            max_connections=max_connections,
        )

    async def register_mcp(
        self,
        target: str | Sequence[str],
        *,
        namespace: str | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout_s: float = 30.0,
        reconnect_window_s: float = 5.0,
        backoff: Backoff | None = None,
    ) -> list[Tool]:
        """Register the tools of an MCP server, over one persistent session.

        Args:
            target: A command (a string or an argv list) for a stdio server, or an http(s) URL:
                a path ending in `/sse` is an SSE endpoint; any other URL is tried as streamable
                HTTP first, then as SSE.
            namespace: Prefix for tool names.
            headers: Sent with every HTTP request to the server.
            connect_timeout_s: Bound on opening a session (transport and handshake).
            reconnect_window_s: How long a call keeps trying to reopen a dropped session.
            backoff: Timing of those reconnection attempts.

        The session opens now, on the running event loop (run batches on that loop), and is
        closed by `aclose()`; calls to one server are in flight at once over it. After the
        session drops, the next call reconnects; a call in flight when it broke is retried once
        only if the tool is read-only or idempotent, else it fails with `OutcomeUnknown`.
        """
        from corral.tools._mcp import register_mcp

        return await register_mcp(
            self,
            target,
            namespace=namespace,
            headers=headers,
            connect_timeout_s=connect_timeout_s,
            reconnect_window_s=reconnect_window_s,
            backoff=backoff,
        )

    def attach(self, source: SupportsAclose) -> None:
        """Tie a connection's lifetime to the registry: `aclose()` closes it, newest first."""
        ensure_open(self._state, "the tool registry")
        self._sources.append(source)

    def add(self, tool: Tool) -> Tool:
        """Register a `Tool` built elsewhere (remote sources use this)."""
        ensure_open(self._state, "the tool registry")
        if tool.name in self._tools:
            raise UsageError(f"tool {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        return tool

    def unregister(self, name: str) -> None:
        """Remove the tool called `name`."""
        if self._tools.pop(name, None) is None:
            raise UsageError(f"tool {name!r} is not registered")

    def set_limit(self, name: str, limit: int) -> None:
        """Size the named budget that tools registered with `limit=name` share."""
        budget = self._budgets.get(name)
        if budget is None:
            self._budgets[name] = Budget(name, limit)
        else:
            budget.set_limit(limit)

    def get(self, name: str) -> Tool:
        """Return the tool called `name`."""
        try:
            return self._tools[name]
        except KeyError:
            raise UsageError(f"tool {name!r} is not registered") from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def schemas(self, format: Literal["openai", "anthropic"] = "openai") -> list[dict[str, Any]]:
        """Return the tool definitions to send to a model, in registration order."""
        if format == "openai":
            return [t.to_openai() for t in self._tools.values()]
        if format == "anthropic":
            return [t.to_anthropic() for t in self._tools.values()]
        raise UsageError(f"format must be 'openai' or 'anthropic', got {format!r}")

    # -- execution -----------------------------------------------------------------------------

    async def execute(
        self,
        tool_calls: Iterable[Any],
        *,
        mode: Mode | None = None,
        timeout: float | None = None,
        policy: Literal["best_effort", "fail_fast"] = "best_effort",
        cwd: str | os.PathLike[str] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> ToolResults:
        """Run every call at once, as far as their resources allow; one result per call, in order.

        Args:
            tool_calls: OpenAI `tool_calls` entries, Anthropic `tool_use` blocks or `ToolCall`s.
            mode: Run every call of this batch in this mode.
            timeout: Seconds for the whole batch; each call gets the smaller of its own timeout
                and the time left.
            policy: "best_effort" or "fail_fast".
            cwd: Resolve relative paths against this directory instead of the registry's.
            context: Passed to tools that take a `ToolContext`.

        Nothing is raised for a tool's failure. Cancellation-safe: cancelling the caller cancels
        every call (a process call's worker is killed) and no task of the batch is left.

        Raises:
            UsageError: `tool_calls` or an option is malformed.
        """
        batch = self._batch(tool_calls, mode, timeout, policy, cwd, context)
        home = self._home.foreign()
        if home is not None:
            return await proxy(home, self._run(*batch))
        return await self._run(*batch)

    def execute_sync(
        self,
        tool_calls: Iterable[Any],
        *,
        mode: Mode | None = None,
        timeout: float | None = None,
        policy: Literal["best_effort", "fail_fast"] = "best_effort",
        cwd: str | os.PathLike[str] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> ToolResults:
        """Run a batch from code that is not async; blocks until every call has finished.

        The registry runs the batch on its own event loop thread. Raises `UsageError` if called
        from a running event loop.
        """
        batch = self._batch(tool_calls, mode, timeout, policy, cwd, context)
        return call_in(self._home.for_sync_caller(), self._run(*batch))

    async def stream(
        self,
        tool_calls: Iterable[Any],
        *,
        mode: Mode | None = None,
        timeout: float | None = None,
        policy: Literal["best_effort", "fail_fast"] = "best_effort",
        cwd: str | os.PathLike[str] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> AsyncGenerator[ToolResult, None]:
        """Yield each call's result as soon as it finishes.

        Leaving the loop early cancels the calls still running (wrap the iterator in
        `contextlib.aclosing` to make that happen at once rather than when it is collected).
        """
        calls, prepared, plan, options = self._batch(
            tool_calls, mode, timeout, policy, cwd, context
        )
        if self._home.foreign() is not None:
            raise UsageError("stream() must run on the event loop the registry is bound to")
        queue: asyncio.Queue[ToolResult | None] = asyncio.Queue()
        # The batch runs in a task this generator owns and awaits in `finally`, rather than in a
        # TaskGroup around the `yield`: closing the generator early throws GeneratorExit at the
        # yield, which a TaskGroup would wrap into an exception group.
        runner = asyncio.create_task(self._run(calls, prepared, plan, options, queue.put_nowait))
        runner.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (result := await queue.get()) is not None:
                yield result
        finally:
            if not runner.done():
                runner.cancel()
                await asyncio.wait([runner])
        runner.result()  # the batch's own failure, if any, reaches the consumer

    def plan(self, tool_calls: Iterable[Any], *, cwd: str | os.PathLike[str] | None = None) -> Plan:
        """Return the order a batch would run in, without running it."""
        return self._batch(tool_calls, None, None, "best_effort", cwd, None)[2]

    def _batch(
        self,
        tool_calls: Iterable[Any],
        mode: Mode | None,
        timeout: float | None,
        policy: str,
        cwd: str | os.PathLike[str] | None,
        context: Mapping[str, Any] | None,
    ) -> tuple[list[RawCall], list[Prepared], Plan, tuple[Policy, float | None]]:
        ensure_open(self._state, "the tool registry")
        try:
            policy_ = Policy(policy)
        except ValueError:
            raise UsageError(
                f"policy must be 'best_effort' or 'fail_fast', got {policy!r}"
            ) from None
        if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
            raise UsageError(f"timeout must be a positive number of seconds, got {timeout!r}")
        calls = parse_calls(tool_calls)
        options = BatchOptions(
            tools=self._tools,
            registry_mode=self._mode,
            batch_mode=check_mode(mode, "mode"),
            independent=self._independent,
            cwd=os.path.abspath(os.path.join(self._cwd, cwd)) if cwd is not None else self._cwd,
            context=context or {},
            executor=self._executor,
            budgets=self._budgets_for,
        )
        prepared, items = prepare(calls, options)
        return calls, prepared, make_plan(items), (policy_, timeout)

    async def _run(
        self,
        calls: list[RawCall],
        prepared: list[Prepared],
        plan: Plan,
        options: tuple[Policy, float | None],
        on_result: Callable[[ToolResult], None] | None = None,
    ) -> ToolResults:
        self._state = State.RUNNING if self._state is State.NEW else self._state
        policy, timeout = options
        results = await run_batch(
            prepared,
            plan,
            policy=policy,
            timeout_s=timeout,
            counters=self._counters,
            on_result=on_result,
        )
        return ToolResults(results, plan=plan)

    def _executor(self, mode: Mode) -> Executor:
        executor = self._executors.get(mode)
        if executor is None:
            if mode == "async":
                executor = InlineExecutor()
            elif mode == "thread":
                executor = ThreadExecutor(max_threads=self._thread_pool_size)
            else:
                executor = ProcessExecutor(
                    size=self._process_pool_size, preload=self._process_modules()
                )
            self._executors[mode] = executor
        return executor

    def _process_modules(self) -> list[str]:
        """Return the modules of the tools that run in worker processes, for them to preload."""
        modules: dict[str, None] = {}
        for tool in self._tools.values():
            if tool.mode == "process" or (self._mode == "process" and tool.process_capable):
                ref = tool.function_ref()
                if ref.module is not None:
                    modules[ref.module] = None
        return list(modules)

    def _budgets_for(self, tool: Tool) -> tuple[Budget, ...]:
        budgets: list[Budget] = []
        if isinstance(tool.limit, int):
            key = f"tool:{tool.name}"
            budget = self._budgets.get(key)
            if budget is None:
                budget = self._budgets[key] = Budget(key, tool.limit)
            budgets.append(budget)
        elif isinstance(tool.limit, str):
            named = self._budgets.get(tool.limit)
            if named is None:
                raise UsageError(
                    f"tool {tool.name!r} uses budget {tool.limit!r}, which has no size; call "
                    f"reg.set_limit({tool.limit!r}, n) first"
                )
            budgets.append(named)
        if self._global_budget is not None:
            budgets.append(self._global_budget)
        return tuple(budgets)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind to the running loop and warm the process pool if any tool runs there."""
        ensure_open(self._state, "the tool registry")
        home = self._home.foreign()
        if home is not None:
            await proxy(home, self.start())
            return
        self._state = State.RUNNING
        if self._mode == "process" or any(t.mode == "process" for t in self._tools.values()):
            executor = self._executor("process")
            assert isinstance(executor, ProcessExecutor)
            await executor.start()

    def statistics(self) -> RegistryStatistics:
        """Return calls in flight and queued, per executor and per budget."""
        executors = {name: e.statistics() for name, e in self._executors.items()}
        budgets = {name: b.statistics() for name, b in self._budgets.items()}
        if self._global_budget is not None:
            budgets[self._global_budget.name] = self._global_budget.statistics()
        return RegistryStatistics(
            in_flight=sum(s.in_flight for s in executors.values()),
            queued=self._counters.waiting + sum(s.queued for s in executors.values()),
            executors=executors,
            budgets=budgets,
        )

    async def aclose(self) -> None:
        """Close the thread and process pools and the portal thread. Idempotent."""
        if self._state in (State.CLOSING, State.CLOSED):
            return
        loop = self._home.loop
        if loop is not None and not loop.is_closed() and loop is not asyncio.get_running_loop():
            if loop.is_running():
                await proxy(loop, self._close_executors())
        else:
            await self._close_executors()
        self._state = State.CLOSED
        self._home.stop_portal()

    def close(self) -> None:
        """Close from code that is not async (the pair of `execute_sync`)."""
        if self._state in (State.CLOSING, State.CLOSED):
            return
        loop = self._home.loop
        if loop is not None and loop.is_running():
            call_in(loop, self._close_executors())
        elif self._executors or self._sources:
            asyncio.run(self._close_executors())
        self._state = State.CLOSED
        self._home.stop_portal()

    async def _close_executors(self) -> None:
        self._state = State.CLOSING
        errors: list[Exception] = []
        while self._sources:
            source = self._sources.pop()
            try:
                await source.aclose()
            except Exception as exc:  # close the rest, then report
                errors.append(exc)
        for executor in list(self._executors.values()):
            await executor.aclose()
        if errors:
            raise ExceptionGroup("closing the registry's connections failed", errors)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<ToolRegistry mode={self._mode!r} tools={len(self._tools)} state={self._state.value}>"
        )


def _explicit(options: ToolOptions) -> dict[str, Any]:
    """Return the options a `@corral.tool` marker set to something other than the default."""
    defaults = ToolOptions()
    return {
        key: getattr(options, key)
        for key in ("description", "read_only", "reads", "writes", "mode", "timeout", "limit")
        if getattr(options, key) != getattr(defaults, key)
    }
