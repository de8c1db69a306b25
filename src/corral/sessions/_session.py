"""`Session`: one conversation's history, settings and requests, and the same-session policies."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from corral.agent import Agent, Turn, new_request_id
from corral.errors import ClosedError, SessionBusy, UsageError
from corral.messages import Message
from corral.sessions._handle import RequestHandle, _HeldLog, _Request

if TYPE_CHECKING:
    from corral.sessions._sessions import Sessions

__all__ = ["HistoryEntry", "Session", "SessionPolicy"]

SessionPolicy = Literal["concurrent", "enqueue", "reject", "interrupt"]
_POLICIES = ("concurrent", "enqueue", "reject", "interrupt")


def check_policy(policy: object) -> SessionPolicy:
    """Return `policy` if it names a same-session policy; raise `UsageError` naming it if not."""
    if policy not in _POLICIES:
        raise UsageError(f"policy must be one of {', '.join(map(repr, _POLICIES))}, got {policy!r}")
    return policy  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One message of a session's history, numbered within the session (1, 2, 3... no gaps)."""

    seq: int
    request_id: str | None
    """The request whose turn added it; None for the history the session was created with."""
    message: Message


class Session:
    """One conversation: its history, its agent settings, tool directory and context, its requests.

    Made by `Sessions.create`. Requests of different sessions share nothing but the agent's
    provider and tool registry: each session's tools run with its own `cwd` and `context`
    (`context` gains `session_id` and `request_id`), and read and write only its own history.

    Same-session policies (the session's default, or per request in `send`):

    - "concurrent": the request starts at once, from the history as it stands then.
    - "enqueue": it waits until every request sent before it has ended (FIFO), then starts.
    - "reject": if any request is in flight, `send` raises `SessionBusy` with its id.
    - "interrupt": every request in flight is cancelled; it starts once they have ended.

    The history rule: a request's turn (the user's message, each assistant message with its
    tool calls, exactly one tool message per call, the final answer) is appended as one unit,
    atomically, when the request ends, in the order requests end. Turns never interleave, none
    is lost, and every message gets the next session sequence number. A turn that was cancelled
    or failed after it started is appended too, consistent: calls without a result get a
    `cancelled` (or `error`) tool message, and it ends with an assistant message marked
    `partial=True` holding the text that had streamed. A request cancelled while queued leaves
    nothing.
    """

    def __init__(
        self,
        owner: Sessions,
        session_id: str,
        *,
        agent: Agent,
        history: Sequence[Message],
        cwd: str | os.PathLike[str] | None,
        context: Mapping[str, Any],
        policy: SessionPolicy,
    ) -> None:
        self._owner = owner
        self.id = session_id
        self.agent = agent
        self.cwd = cwd
        self.context: Mapping[str, Any] = dict(context)
        self.policy: SessionPolicy = policy
        self._entries: list[HistoryEntry] = [
            HistoryEntry(n, None, m) for n, m in enumerate(history, 1)
        ]
        self._active: list[_Request] = []  # in the order they were sent
        self._deleted = False
        # Runs the `on_request_end` hooks one at a time, in the order the turns committed:
        # asyncio.Lock wakes waiters first come, first served, and a request reaches it with no
        # await after its commit, so a store appending turns gets them in history order.
        self._hook_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (
            f"<Session {self.id} messages={len(self._entries)} requests={len(self._active)} "
            f"policy={self.policy}>"
        )

    @property
    def history(self) -> tuple[Message, ...]:
        """The messages of every turn that has ended, in order."""
        return tuple(e.message for e in self._entries)

    @property
    def entries(self) -> tuple[HistoryEntry, ...]:
        """The history with each message's sequence number and request id."""
        return tuple(self._entries)

    @property
    def requests(self) -> tuple[RequestHandle, ...]:
        """The requests in flight (queued or running), in the order they were sent."""
        return tuple(RequestHandle(r) for r in self._active)

    def send(self, message: str | Message, *, policy: SessionPolicy | None = None) -> RequestHandle:
        """Start a request answering `message`; return its handle at once.

        Admission is atomic: nothing is awaited between looking at the requests in flight and
        joining them, so two sends can never both pass a `reject`, or both miss an `interrupt`.

        Args:
            message: The user's message.
            policy: This request's same-session policy; defaults to the session's.

        Raises:
            SessionBusy: the policy is "reject" and a request is in flight; it carries the id of
                the oldest running one.
            ClosedError: the session was deleted or the `Sessions` are closing.
        """
        chosen = check_policy(self.policy if policy is None else policy)
        if self._deleted:
            raise ClosedError(f"session {self.id!r} was deleted; it cannot take requests")
        self._owner._ensure_open()
        active = tuple(self._active)
        if chosen == "reject" and active:
            running = next((r for r in active if r.turn.status == "running"), active[0])
            raise SessionBusy(
                f"session {self.id!r} is busy with request {running.turn.id!r} and the policy "
                "is 'reject'",
                running_request_id=running.turn.id,
            )
        request_id = new_request_id()
        turn = Turn(
            message,
            request_id=request_id,
            cwd=self.cwd,
            context={**self.context, "session_id": self.id, "request_id": request_id},
            on_commit=self._commit,
        )
        log = turn.log = _HeldLog()  # fresh and empty: nothing was appended to the turn's own
        if chosen == "interrupt":
            for other in active:
                other.cancel(f"interrupted by request {request_id}")
        waits_for = active if chosen in ("enqueue", "interrupt") else ()
        request = _Request(self, self.agent, turn, waits_for, log)
        self._active.append(request)
        self._owner._spawn(request)
        return RequestHandle(request)

    def cancel_all(self, reason: str | None = None) -> int:
        """Cancel every request in flight (running or queued); return how many were cancelled."""
        reason = reason or f"cancelled with every request of session {self.id}"
        return sum(r.cancel(reason) for r in tuple(self._active))

    def _commit(self, turn: Turn) -> None:
        # Called by the turn as it ends, synchronously: the whole turn lands at once.
        start = len(self._entries) + 1
        self._entries.extend(
            HistoryEntry(seq, turn.id, m) for seq, m in enumerate(turn.messages, start)
        )
        if self._owner._on_request_end is not None and isinstance(turn.log, _HeldLog):
            # The terminal event, appended right after this, waits for the hook.
            turn.log.hold()

    def _forget(self, request: _Request) -> None:
        if request in self._active:
            self._active.remove(request)
