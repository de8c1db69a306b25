"""`Sessions`: the owner of every session and of every request task."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from corral._types import AsyncResource
from corral.agent import Agent, Turn
from corral.errors import NotFound, UsageError
from corral.executors.base import State, ensure_open
from corral.messages import Message
from corral.sessions._handle import _Request
from corral.sessions._session import Session, SessionPolicy, check_policy

__all__ = ["RequestEndHook", "Sessions", "SessionsStatistics"]

logger = logging.getLogger(__name__)

RequestEndHook: TypeAlias = Callable[[Session, Turn], Awaitable[None]]
"""`on_request_end(session, turn)`: see `Sessions`."""


@dataclass(frozen=True, slots=True)
class SessionsStatistics:
    """Sessions held, and requests in flight: running, or queued behind others of their session."""

    sessions: int
    running: int
    queued: int

    @property
    def idle(self) -> bool:
        """Whether no request is in flight."""
        return self.running == 0 and self.queued == 0


class Sessions(AsyncResource):
    """Many sessions, each with its own history and settings, over one agent.

    Every request runs in a task this object owns: `aclose()` (or leaving `async with`) cancels
    the requests in flight and waits for them, so none outlives it. Use it from one event loop.

    Args:
        agent: The model, tools and settings every session starts from.
        policy: The default same-session policy of new sessions (see `Session`).
        on_request_end: Awaited once for every request as it ends: the place to persist turns
            (the server appends `turn.messages` to its store here). If the turn started, the
            hook runs after the turn is in the session's history and before the request's
            terminal event reaches any reader or `result()` returns; hooks of one session run
            one at a time, in the order their turns were appended to the history. `turn.status`
            says how it ended ("done", "failed", "cancelled"); a turn that never started (it was
            cancelled while queued) has nothing to persist, and its hook may run after its
            terminal event. A hook that raises is logged; the request ends as it would have.
            Hooks run in the requests' tasks: `aclose()` and `delete()` wait for them.
    """

    def __init__(
        self,
        agent: Agent,
        *,
        policy: SessionPolicy = "concurrent",
        on_request_end: RequestEndHook | None = None,
    ) -> None:
        if not isinstance(agent, Agent):
            raise UsageError(f"agent must be a corral.Agent, got {agent!r}")
        if on_request_end is not None and not callable(on_request_end):
            raise UsageError(f"on_request_end must be an async function, got {on_request_end!r}")
        self._agent = agent
        self._policy = check_policy(policy)
        self._on_request_end = on_request_end
        self._sessions: dict[str, Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._state = State.RUNNING

    def __repr__(self) -> str:
        return f"<Sessions sessions={len(self._sessions)} state={self._state.value}>"

    @property
    def agent(self) -> Agent:
        """The agent new sessions start from."""
        return self._agent

    def create(
        self,
        *,
        session_id: str | None = None,
        history: Sequence[Message] = (),
        cwd: str | os.PathLike[str] | None = None,
        context: Mapping[str, Any] | None = None,
        policy: SessionPolicy | None = None,
        agent: Agent | None = None,
        system: str | None = None,
        model: str | None = None,
        temperature: float | None = None,
        max_steps: int | None = None,
    ) -> Session:
        """Create a session and return it.

        Args:
            session_id: Its id; a fresh one by default.
            history: Messages it starts with.
            cwd: Directory its tools resolve relative paths against (relative to the registry's).
            context: Passed to its tools (`ToolContext.extras`), with `session_id` and
                `request_id` added.
            policy: Its default same-session policy; defaults to the `Sessions`' one.
            agent: Its own agent, instead of the shared one.
            system: Overrides the agent's system prompt; None keeps the agent's.
            model: Overrides the agent's model; None keeps it.
            temperature: Overrides the agent's temperature; None keeps it (to unset it, pass
                an `agent=` made with `dataclasses.replace`).
            max_steps: Overrides the agent's step limit; None keeps it.

        Raises:
            UsageError: the id is taken, or a setting is bad.
        """
        ensure_open(self._state, "the sessions")
        session_id = session_id if session_id is not None else f"ses_{uuid.uuid4().hex[:20]}"
        if not isinstance(session_id, str) or not session_id:
            raise UsageError(f"session_id must be a non-empty string, got {session_id!r}")
        if session_id in self._sessions:
            raise UsageError(f"session {session_id!r} already exists")
        base = agent if agent is not None else self._agent
        overrides: dict[str, Any] = {
            k: v
            for k, v in (
                ("system", system),
                ("model", model),
                ("temperature", temperature),
                ("max_steps", max_steps),
            )
            if v is not None
        }
        session = Session(
            self,
            session_id,
            agent=dataclasses.replace(base, **overrides) if overrides else base,
            history=tuple(history),
            cwd=cwd,
            context=context or {},
            policy=check_policy(policy if policy is not None else self._policy),
        )
        self._sessions[session_id] = session
        return session

    def get(self, session_id: str) -> Session:
        """Return the session with this id.

        Raises:
            NotFound: there is none (a KeyError too).
        """
        try:
            return self._sessions[session_id]
        except KeyError:
            raise NotFound(f"no session {session_id!r}") from None

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    async def delete(self, session_id: str) -> None:
        """Remove a session: cancel its requests and wait for them to end.

        Raises:
            NotFound: there is no such session (a KeyError too).
        """
        session = self.get(session_id)
        del self._sessions[session_id]
        session._deleted = True
        tasks = [r.task for r in session._active if r.task is not None]
        session.cancel_all(f"session {session_id} was deleted")
        if tasks:
            await asyncio.wait(tasks)

    def cancel_all(self, session_id: str, reason: str | None = None) -> int:
        """Cancel every request in flight in a session; return how many were cancelled.

        Raises:
            NotFound: there is no such session (a KeyError too).
        """
        return self.get(session_id).cancel_all(reason)

    def statistics(self) -> SessionsStatistics:
        """Return the number of sessions, and of requests running and queued."""
        running = queued = 0
        for session in self._sessions.values():
            for request in session._active:
                if request.turn.status == "queued":
                    queued += 1
                else:
                    running += 1
        return SessionsStatistics(len(self._sessions), running, queued)

    async def aclose(self) -> None:
        """Cancel every request in flight and wait for them to end. Idempotent.

        The sessions and their histories stay readable; new requests raise `ClosedError`.
        """
        if self._state is State.CLOSED:
            return
        self._state = State.CLOSING
        for session in list(self._sessions.values()):
            session.cancel_all("the sessions are closing")
        # Requests of deleted sessions still running are ours too: wait for every task.
        while self._tasks:
            await asyncio.wait(list(self._tasks))
        self._state = State.CLOSED

    def _ensure_open(self) -> None:
        ensure_open(self._state, "the sessions")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise UsageError("send() must be called from a running event loop") from None

    async def _request_ended(self, request: _Request) -> None:
        hook = self._on_request_end
        if hook is None:
            return
        async with request.session._hook_lock:
            try:
                await hook(request.session, request.turn)
            except Exception:  # the hook's failure is the hook's: the request has ended
                logger.exception("on_request_end failed for request %s", request.turn.id)

    def _spawn_ended(self, request: _Request) -> None:
        # A request cancelled before its task ran has no task of its own to run the hook in:
        # this one is owned like the request tasks, and awaited by `aclose()`.
        if self._on_request_end is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._request_ended(request), name=f"corral-request-end-{request.turn.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self, request: _Request) -> None:
        name = f"corral-request-{request.turn.id}"
        task = asyncio.get_running_loop().create_task(request.main(), name=name)
        request.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(request.on_done)
