"""The outcome of one tool call, and of a batch."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

import pydantic_core

if TYPE_CHECKING:
    from corral.scheduler._plan import Plan

__all__ = ["ErrorInfo", "Status", "ToolResult", "ToolResults"]


class Status(enum.StrEnum):
    """How a call ended."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why a call did not produce a value: the exception type's name and its message."""

    type: str
    message: str
    traceback: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_exception(cls, exc: BaseException, *, traceback: str | None = None) -> ErrorInfo:
        """Describe `exc` by its type name and message."""
        return cls(type(exc).__name__, str(exc), traceback)

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome of one tool call.

    `started_at` and `finished_at` are `time.perf_counter()` readings (monotonic seconds), so
    results of one batch can be laid on a timeline; `started_at` is None for a call that never ran.
    """

    id: str
    name: str
    status: Status
    value: Any = None
    error: ErrorInfo | None = None
    started_at: float | None = None
    finished_at: float | None = None
    mode: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the call returned a value."""
        return self.status is Status.OK

    @property
    def duration_s(self) -> float | None:
        """Seconds the call ran, or None if it never started."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def content(self) -> str:
        """Return the text a model reads for this result: the value, or the error."""
        if self.status is Status.OK:
            return _to_text(self.value)
        assert self.error is not None
        return f"{self.status.value}: {self.error}"

    def to_openai_message(self) -> dict[str, Any]:
        """Return the OpenAI chat `tool` message answering this call."""
        return {"role": "tool", "tool_call_id": self.id, "content": self.content()}

    def to_anthropic_block(self) -> dict[str, Any]:
        """Return the Anthropic `tool_result` block answering this call."""
        block: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": self.id,
            "content": self.content(),
        }
        if self.status is not Status.OK:
            block["is_error"] = True
        return block


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        # pydantic serialises models, dataclasses, paths, datetimes and the like.
        return pydantic_core.to_json(value, fallback=repr).decode()


class ToolResults(Sequence[ToolResult]):
    """One result per call, in the order the calls were given."""

    __slots__ = ("_by_id", "_results", "plan")

    def __init__(self, results: Iterable[ToolResult], *, plan: Plan | None = None) -> None:
        self._results = tuple(results)
        self._by_id: dict[str, ToolResult] | None = None
        self.plan = plan

    @overload
    def __getitem__(self, index: int) -> ToolResult: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ToolResult]: ...
    def __getitem__(self, index: int | slice) -> ToolResult | Sequence[ToolResult]:
        return self._results[index]

    def __len__(self) -> int:
        return len(self._results)

    def __iter__(self) -> Iterator[ToolResult]:
        return iter(self._results)

    def __repr__(self) -> str:
        return f"ToolResults({list(self._results)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ToolResults):
            return self._results == other._results
        if isinstance(other, Sequence):
            return list(self._results) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    @property
    def ok(self) -> bool:
        """Whether every call returned a value."""
        return all(r.status is Status.OK for r in self._results)

    def by_id(self, call_id: str) -> ToolResult:
        """Return the result of the call with id `call_id`."""
        if self._by_id is None:
            self._by_id = {r.id: r for r in self._results}
        try:
            return self._by_id[call_id]
        except KeyError:
            raise KeyError(f"no result for call id {call_id!r}") from None

    def to_openai_messages(self) -> list[dict[str, Any]]:
        """Return one OpenAI chat `tool` message per call, in call order."""
        return [r.to_openai_message() for r in self._results]

    def to_anthropic_blocks(self) -> list[dict[str, Any]]:
        """Return one Anthropic `tool_result` block per call, for the next user message."""
        return [r.to_anthropic_block() for r in self._results]
