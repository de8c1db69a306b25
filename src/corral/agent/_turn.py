"""`Turn`: one request's record: the user's message, what the agent added, its events, its end."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from corral.agent._events import (
    Answer,
    Cancelled,
    Done,
    EventLog,
    Failed,
    Queued,
    Started,
    StepFinished,
    StepStarted,
    TerminalEvent,
    TextChunk,
    ToolCallFinished,
    ToolCallStarted,
)
from corral.errors import UsageError
from corral.messages import Message
from corral.providers.base import Usage
from corral.scheduler import ErrorInfo, Status, ToolResult
from corral.tools import ToolCall

__all__ = ["RequestStatus", "RunResult", "StopReason", "Turn"]

logger = logging.getLogger(__name__)

RequestStatus = Literal["new", "queued", "running", "done", "failed", "cancelled"]
StopReason = Literal["answer", "max_steps"]


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a request ended well: the answer, and every message its turn added to the history.

    `stop_reason` is "answer" when the model answered without asking for tools, "max_steps" when
    the agent stopped it at its step limit (then `text` is the text of its last message, often
    empty, and the turn ends with tool results).
    """

    request_id: str
    text: str
    stop_reason: StopReason
    steps: int
    usage: Usage
    messages: tuple[Message, ...]
    """The whole turn, in order: the user's message first."""

    @property
    def message(self) -> Message | None:
        """The final assistant message, or None if the turn stopped at `max_steps`."""
        return self.messages[-1] if self.stop_reason == "answer" else None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able form."""
        return {
            "request_id": self.request_id,
            "text": self.text,
            "stop_reason": self.stop_reason,
            "steps": self.steps,
            "usage": {
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
            },
            "messages": [m.to_dict() for m in self.messages],
        }


class Turn:
    """One request to an agent, from the user's message to its end, and the record it leaves.

    The agent fills it step by step (`Agent.run_turn`); whoever owns the request reads it: its
    `log` of events (late readers replay it from the start), its `messages`, and its outcome.
    Whatever ends the turn, `messages` is consistent when it is committed: every tool call has
    exactly one tool message (calls that had not finished get a `cancelled` or `error` result), and
    a turn that did not finish ends with an assistant message marked `partial=True` holding the
    text that had streamed (possibly none) -- the record that the answer was cut short.

    Args:
        message: The user's message.
        request_id: Carried by every event.
        cwd: Directory the tools resolve relative paths against (None: the registry's).
        context: Passed to tools as `ToolContext.extras`.
        on_commit: Called once with the turn, if it started, as it ends and before its terminal
            event: the place to append `messages` to a history, so that a reader who sees the
            terminal event (or whose `result()` returns) finds the turn already there.
    """

    def __init__(
        self,
        message: str | Message,
        *,
        request_id: str,
        cwd: str | os.PathLike[str] | None = None,
        context: Mapping[str, Any] | None = None,
        on_commit: Callable[[Turn], None] | None = None,
    ) -> None:
        self.id = request_id
        self.message = _user_message(message)
        self.cwd = cwd
        self.context: Mapping[str, Any] = dict(context or {})
        self.log = EventLog()
        self.status: RequestStatus = "new"
        self.messages: list[Message] = []
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self.cancel_reason: str | None = None
        """Set by whoever cancels the turn's task, before cancelling it; the `Cancelled` event
        and the `cancelled` tool results carry it."""
        self.finished = asyncio.Event()
        self._on_commit = on_commit
        self._step = 0
        self._text: list[str] = []
        self._pending: tuple[ToolCall, ...] = ()
        self._results: dict[str, ToolResult] = {}
        self._input_tokens = 0
        self._output_tokens = 0

    def __repr__(self) -> str:
        return f"<Turn {self.id} {self.status} step={self._step}>"

    @property
    def step(self) -> int:
        """The current step, from 1; 0 before the first."""
        return self._step

    @property
    def done(self) -> bool:
        """Whether the turn has ended, however."""
        return self.status in ("done", "failed", "cancelled")

    @property
    def usage(self) -> Usage:
        """Tokens used so far, over every step."""
        return Usage(self._input_tokens, self._output_tokens)

    # -- progress (called by the agent) --------------------------------------------------------

    def queue(self, waiting_for: Sequence[str]) -> None:
        """Record that the request waits for the requests `waiting_for`."""
        self.status = "queued"
        self.log.append(Queued(self.log.next_seq, self.id, tuple(waiting_for)))

    def start(self, history_len: int) -> None:
        """Begin: the user's message is the turn's first message."""
        if self.status not in ("new", "queued"):
            raise UsageError(f"turn {self.id!r} is {self.status}; it can start only once")
        self.status = "running"
        self.messages.append(self.message)
        self.log.append(Started(self.log.next_seq, self.id, history_len))

    def begin_step(self) -> int:
        """Begin the next step and return its number."""
        self._step += 1
        self._text = []
        self.log.append(StepStarted(self.log.next_seq, self.id, self._step))
        return self._step

    def add_text(self, text: str) -> None:
        """Record a piece of the model's text."""
        self._text.append(text)
        self.log.append(TextChunk(self.log.next_seq, self.id, self._step, text))

    def add_usage(self, usage: Usage) -> None:
        """Count the tokens of one model call."""
        self._input_tokens += usage.input_tokens
        self._output_tokens += usage.output_tokens

    def end_step(self, finish_reason: str, usage: Usage | None, tool_calls: int) -> None:
        """Record the end of the step: why the model stopped, its tokens and its calls."""
        self.log.append(
            StepFinished(self.log.next_seq, self.id, self._step, finish_reason, usage, tool_calls)
        )

    def commit_tool_calls(self, calls: Sequence[ToolCall]) -> None:
        """Add the assistant message asking for `calls`; they are pending until their results."""
        self.messages.append(Message.assistant("".join(self._text), tuple(calls)))
        self._text = []
        self._pending = tuple(calls)
        self._results = {}
        for call in calls:
            self.log.append(ToolCallStarted(self.log.next_seq, self.id, self._step, call))

    def record_result(self, result: ToolResult) -> None:
        """Record one pending call's result as soon as it is known."""
        if result.id in self._results or all(c.id != result.id for c in self._pending):
            logger.warning("turn %s: ignoring a result for call %r", self.id, result.id)
            return
        self._results[result.id] = result
        self.log.append(ToolCallFinished(self.log.next_seq, self.id, self._step, result))

    def commit_results(self) -> tuple[ToolResult, ...]:
        """Add one tool message per pending call, in call order, and return the results.

        A call without a result (the batch broke) gets an `error` one: never a dangling call id.
        """
        error = ErrorInfo("MissingResult", "the tool batch ended without a result for this call")
        return self._settle_calls(Status.ERROR, error)

    def commit_answer(self) -> Message:
        """Add the final assistant message, made of the step's text."""
        message = Message.assistant("".join(self._text))
        self._text = []
        self.messages.append(message)
        self.log.append(Answer(self.log.next_seq, self.id, message))
        return message

    # -- endings -------------------------------------------------------------------------------

    def finish_done(self, stop_reason: StopReason) -> RunResult:
        """End well: commit, then emit `Done`."""
        last = next((m for m in reversed(self.messages) if m.role == "assistant"), None)
        self.result = RunResult(
            self.id,
            last.content if last is not None else "",
            stop_reason,
            self._step,
            self.usage,
            tuple(self.messages),
        )
        result = self.result
        self._end("done", lambda seq: Done(seq, self.id, result))
        return result

    def finish_failed(self, exc: BaseException) -> None:
        """End with an error: settle the history, commit, then emit `Failed`."""
        if self.done:
            return
        info = ErrorInfo.from_exception(exc)
        self.error = exc
        self._settle(Status.ERROR, info)
        self._end("failed", lambda seq: Failed(seq, self.id, info))

    def finish_cancelled(self) -> None:
        """End cancelled: settle the history, commit if it had started, then emit `Cancelled`.

        Idempotent, so the owner of a task that was cancelled before it ran can call it too.
        """
        if self.done:
            return
        reason = self.cancel_reason or "cancelled"
        started = self.status == "running"
        self._settle(Status.CANCELLED, ErrorInfo("RequestCancelled", reason))
        self._end("cancelled", lambda seq: Cancelled(seq, self.id, reason, started))

    def _settle(self, status: Status, error: ErrorInfo) -> None:
        if self.status != "running":
            return  # never started: it leaves nothing
        self._settle_calls(status, error)
        # The marker that the answer was cut short, with whatever text had streamed.
        self.messages.append(Message.assistant("".join(self._text), partial=True))
        self._text = []

    def _settle_calls(self, status: Status, error: ErrorInfo) -> tuple[ToolResult, ...]:
        results: list[ToolResult] = []
        for call in self._pending:
            result = self._results.get(call.id)
            if result is None:
                result = ToolResult(call.id, call.name, status, error=error)
                self.record_result(result)
            results.append(result)
            self.messages.append(Message.tool_result(result))
        self._pending = ()
        self._results = {}
        return tuple(results)

    def _end(self, status: RequestStatus, terminal: Callable[[int], TerminalEvent]) -> None:
        started = self.status == "running"
        self.status = status
        try:
            if started and self._on_commit is not None:
                self._on_commit(self)
        finally:
            # Even if committing failed: readers and waiters must never be left hanging.
            self.log.append(terminal(self.log.next_seq))
            self.finished.set()


def _user_message(message: str | Message) -> Message:
    if isinstance(message, str):
        return Message.user(message)
    if isinstance(message, Message) and message.role == "user":
        return message
    raise UsageError(f"a request starts with a user message (a str or Message), got {message!r}")
