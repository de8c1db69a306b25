"""`Agent`: the loop that calls the model, runs the tools it asks for, feeds the results back."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from corral.agent._events import Event
from corral.agent._turn import RunResult, Turn
from corral.errors import StreamBroken, UsageError
from corral.messages import Message
from corral.providers.base import (
    Finish,
    ModelRequest,
    Provider,
    TextDelta,
    ToolCallDelta,
    ToolCallDone,
    ToolSpec,
    Usage,
)
from corral.scheduler import ErrorInfo, Status, ToolResult
from corral.tools import ToolCall, ToolRegistry

__all__ = ["Agent", "new_request_id"]


def new_request_id() -> str:
    """Return a fresh, unique request id."""
    return f"req_{uuid.uuid4().hex[:20]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Agent:
    """A model, its tools and its settings: runs turns of a conversation; holds no history.

    A step calls the model with the history, the turn so far and the registry's tools, streaming
    its text; if it asks for tools, every call of that message runs in one `ToolRegistry` batch (at
    once, as far as their resources allow), the assistant message and exactly one tool message per
    call id join the turn, and the next step begins. The turn ends when the model answers without
    tools, or after `max_steps` steps.

    An `Agent` is immutable and shared: any number of turns run on it at once. Derive variants
    with `dataclasses.replace(agent, model=..., temperature=...)`.

    Args:
        provider: The model service.
        tools: The tools the model may call; None for none.
        system: A system prompt put before the history.
        model: The model name the provider is asked for.
        max_steps: Most model calls in one turn.
        temperature, max_tokens, seed, parallel_tool_calls: Sent with every model call; None
            leaves them to the provider.
        tool_timeout_s: Seconds for each batch of tool calls; None for no limit (a tool's own
            timeout still applies).
        tool_policy: "best_effort" (a failed call does not stop its siblings) or "fail_fast".
        extra: Provider-specific request fields.
    """

    provider: Provider
    tools: ToolRegistry | None = None
    system: str | None = None
    model: str = "default"
    max_steps: int = 10
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    parallel_tool_calls: bool | None = None
    tool_timeout_s: float | None = None
    tool_policy: Literal["best_effort", "fail_fast"] = "best_effort"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not callable(getattr(self.provider, "stream", None)):
            raise UsageError(f"provider must have a stream() method, got {self.provider!r}")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise UsageError(f"max_steps must be an int >= 1, got {self.max_steps!r}")
        if self.tool_timeout_s is not None and not self.tool_timeout_s > 0:
            raise UsageError(f"tool_timeout_s must be > 0 or None, got {self.tool_timeout_s!r}")
        if self.tool_policy not in ("best_effort", "fail_fast"):
            raise UsageError(
                f"tool_policy must be 'best_effort' or 'fail_fast', got {self.tool_policy!r}"
            )

    # -- entry points --------------------------------------------------------------------------

    async def run(
        self,
        message: str | Message,
        *,
        history: Sequence[Message] = (),
        cwd: str | os.PathLike[str] | None = None,
        context: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> RunResult:
        """Answer `message` after `history`; return the answer and the turn's messages.

        Append `result.messages` to your history to continue the conversation.

        Raises:
            ProviderError: the model call failed (after the provider's own retries).
        """
        turn = Turn(message, request_id=request_id or new_request_id(), cwd=cwd, context=context)
        return await self.run_turn(turn, history)

    async def stream(
        self,
        message: str | Message,
        *,
        history: Sequence[Message] = (),
        cwd: str | os.PathLike[str] | None = None,
        context: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Answer `message`, yielding every event; the last is `Done`, `Failed` or `Cancelled`.

        A failure is reported as the `Failed` event, not raised. Leaving the loop early cancels
        the turn; wrap the generator in `contextlib.aclosing` to make that happen at once.
        """
        turn = Turn(message, request_id=request_id or new_request_id(), cwd=cwd, context=context)
        # The turn runs in a task this generator owns and awaits in `finally` (not in a TaskGroup
        # around the `yield`: closing the generator throws GeneratorExit at the yield).
        runner = asyncio.create_task(self._run_quietly(turn, history))
        try:
            async for event in turn.log.read():
                yield event
        finally:
            if not runner.done():
                turn.cancel_reason = "the reader of the stream left"
                runner.cancel()
            await asyncio.wait([runner])

    async def _run_quietly(self, turn: Turn, history: Sequence[Message]) -> None:
        with contextlib.suppress(Exception):  # the turn recorded it: its `Failed` event
            await self.run_turn(turn, history)

    async def run_turn(self, turn: Turn, history: Sequence[Message] = ()) -> RunResult:
        """Run `turn` after `history` to its end: what `run`, `stream` and sessions build on.

        Whatever happens, the turn is finished before this returns or raises: its messages are
        consistent, committed (its `on_commit`), and its log ends with a terminal event.
        Cancellation-safe: cancelling the caller cancels the model call or the tool batch in
        flight; calls without a result get `cancelled` ones and the answer so far is marked
        partial; then `CancelledError` propagates.

        Raises:
            ProviderError: the model call failed; the turn ends `Failed`.
        """
        history = tuple(history)
        turn.start(len(history))
        try:
            return await self._loop(turn, history)
        except asyncio.CancelledError:
            turn.finish_cancelled()
            raise
        except BaseException as exc:
            turn.finish_failed(exc)
            raise

    # -- the loop ------------------------------------------------------------------------------

    async def _loop(self, turn: Turn, history: tuple[Message, ...]) -> RunResult:
        specs = tuple(ToolSpec.of(t) for t in self.tools) if self.tools is not None else ()
        before = ((Message.system(self.system),) if self.system else ()) + history
        while True:
            step = turn.begin_step()
            request = self._request(before + tuple(turn.messages), specs)
            calls, reason, usage = await self._call_model(turn, request)
            if not calls:
                turn.end_step(reason, usage, 0)
                turn.commit_answer()
                return turn.finish_done("answer")
            calls = _unique_ids(calls, step)
            turn.commit_tool_calls(calls)
            await self._run_tools(turn, calls)
            turn.commit_results()
            turn.end_step(reason, usage, len(calls))
            if step >= self.max_steps:
                return turn.finish_done("max_steps")

    def _request(self, messages: tuple[Message, ...], specs: tuple[ToolSpec, ...]) -> ModelRequest:
        return ModelRequest(
            model=self.model,
            messages=messages,
            tools=specs,
            temperature=self.temperature,
            seed=self.seed,
            max_tokens=self.max_tokens,
            parallel_tool_calls=self.parallel_tool_calls,
            extra=self.extra,
        )

    async def _call_model(
        self, turn: Turn, request: ModelRequest
    ) -> tuple[list[ToolCall], str, Usage | None]:
        assembly = _Assembly()
        usage: Usage | None = None
        reason: str | None = None
        events = self.provider.stream(request)
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    if event.text:
                        turn.add_text(event.text)
                elif isinstance(event, ToolCallDelta):
                    assembly.delta(event)
                elif isinstance(event, ToolCallDone):
                    assembly.done(event.call)
                elif isinstance(event, Usage):
                    usage = event  # one per call; should a provider send several, the last wins
                elif isinstance(event, Finish):
                    reason = event.reason
        finally:
            # Close the provider's generator here, on this task: left to the garbage collector,
            # its clean-up would run later, in a task of the loop's own.
            await _aclose(events)
        if usage is not None:
            turn.add_usage(usage)
        if reason is None:
            raise StreamBroken(f"the stream of {request.model!r} ended without a Finish event")
        return assembly.calls(), reason, usage

    async def _run_tools(self, turn: Turn, calls: list[ToolCall]) -> None:
        if self.tools is None:
            error = ErrorInfo("ToolNotFound", "this agent has no tools")
            for call in calls:
                turn.record_result(ToolResult(call.id, call.name, Status.ERROR, error=error))
            return
        context = dict(turn.context)
        received = False
        try:
            # stream(): each result is reported the moment its call ends, not with the batch.
            async with contextlib.aclosing(
                self.tools.stream(
                    calls,
                    timeout=self.tool_timeout_s,
                    policy=self.tool_policy,
                    cwd=turn.cwd,
                    context=context,
                )
            ) as results:
                async for result in results:
                    received = True
                    turn.record_result(result)
        except UsageError:
            # stream() runs only on the loop the registry is bound to; execute() proxies there.
            # Any other UsageError (a closed registry) comes back from execute() unchanged.
            if received:
                raise
            batch = await self.tools.execute(
                calls,
                timeout=self.tool_timeout_s,
                policy=self.tool_policy,
                cwd=turn.cwd,
                context=context,
            )
            for result in batch:
                turn.record_result(result)


class _Assembly:
    """Tool calls of one model message: as the provider assembled them, else from their deltas."""

    __slots__ = ("_done", "_parts")

    def __init__(self) -> None:
        self._done: list[ToolCall] = []
        self._parts: dict[int, list[Any]] = {}  # index -> [id, name, argument pieces]

    def delta(self, delta: ToolCallDelta) -> None:
        parts = self._parts.setdefault(delta.index, [None, None, []])
        if delta.id:
            parts[0] = delta.id
        if delta.name:
            parts[1] = delta.name
        parts[2].append(delta.arguments)

    def done(self, call: ToolCall) -> None:
        self._done.append(call)

    def calls(self) -> list[ToolCall]:
        # Providers that send `ToolCallDone` send it for every call; the deltas are the fallback
        # for those that only stream.
        if self._done:
            return list(self._done)
        return [
            ToolCall(call_id or "", name, "".join(pieces) or "{}")
            for _, (call_id, name, pieces) in sorted(self._parts.items())
            if name
        ]


def _unique_ids(calls: list[ToolCall], step: int) -> list[ToolCall]:
    """Give calls without an id, or with one used earlier in the message, an id of their own.

    Every tool message answers one id; two calls sharing an id could not both be answered.
    """
    seen: set[str] = set()
    unique: list[ToolCall] = []
    for index, call in enumerate(calls):
        call_id = call.id
        n = 0
        while not call_id or call_id in seen:
            n += 1
            call_id = f"{call.id or 'call'}_{step}_{index}" + (f"_{n}" if n > 1 else "")
        seen.add(call_id)
        unique.append(call if call_id == call.id else dataclasses.replace(call, id=call_id))
    return unique


async def _aclose(events: AsyncIterator[Any]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
