"""`RequestHandle`: one request's events, result and cancellation; and the task that runs it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from corral.agent import (
    Agent,
    Event,
    EventLog,
    EventReader,
    RequestStatus,
    RunResult,
    TerminalEvent,
    Turn,
)
from corral.errors import RequestCancelled

if TYPE_CHECKING:
    from corral.sessions._session import Session

__all__ = ["RequestHandle"]

logger = logging.getLogger(__name__)


class _HeldLog(EventLog):
    """A request's event log that can hold its terminal event back until the turn is persisted.

    `hold()` is called as the turn commits (only when the sessions have an `on_request_end`
    hook); the terminal event the turn appends next is kept aside until `release()`, so a reader
    who sees it, or whose `result()` returns, finds the turn already persisted.
    """

    __slots__ = ("_held", "_holding", "_released")

    def __init__(self) -> None:
        super().__init__()
        self._holding = False
        self._held: Event | None = None
        self._released = asyncio.Event()

    def hold(self) -> None:
        """Keep the next terminal event back until `release()`."""
        self._holding = True

    def append(self, event: Event) -> None:
        """Add `event`; a terminal event waits for `release()` while the log is held."""
        if self._holding and isinstance(event, TerminalEvent) and self._held is None:
            self._held = event
            return
        super().append(event)

    def release(self) -> None:
        """Publish the held terminal event, if any. Idempotent."""
        self._holding = False
        held, self._held = self._held, None
        if held is not None:
            super().append(held)
        self._released.set()

    async def wait_released(self) -> None:
        """Wait until the log is released (the request's hook, if any, has run)."""
        await self._released.wait()


class _Request:
    """A request's turn, the requests it waits for, and the task that runs it."""

    __slots__ = ("agent", "log", "session", "task", "turn", "waits_for")

    def __init__(
        self,
        session: Session,
        agent: Agent,
        turn: Turn,
        waits_for: tuple[_Request, ...],
        log: _HeldLog,
    ) -> None:
        self.session = session
        self.agent = agent
        self.turn = turn
        self.waits_for = waits_for
        self.log = log
        self.task: asyncio.Task[None] | None = None

    def cancel(self, reason: str) -> bool:
        """Cancel the request unless it has ended or is being cancelled; return whether it was."""
        if self.turn.done or self.turn.cancel_reason is not None:
            return False
        # The reason goes first: the task reads it to know the cancellation is ours.
        self.turn.cancel_reason = reason
        assert self.task is not None
        self.task.cancel()
        return True

    async def main(self) -> None:
        try:
            await self._run()
            # Reached unless a cancellation not ours (or a BaseException) goes on.
            await self.session._owner._request_ended(self)
        finally:
            self.log.release()  # whatever happened: readers must never be left hanging

    async def _run(self) -> None:
        turn = self.turn
        try:
            waiting = [r for r in self.waits_for if not r.turn.done]
            if waiting:
                turn.queue([r.turn.id for r in waiting])
                for other in waiting:
                    await other.turn.finished.wait()
            # The history as it stands now, after every request this one waited for.
            await self.agent.run_turn(turn, self.session.history)
        except asyncio.CancelledError:
            turn.finish_cancelled()  # a no-op if the agent already finished it
            task = asyncio.current_task()
            assert task is not None
            # Absorb only a cancellation we issued (cancel() set the reason) and nobody else's.
            if turn.cancel_reason is None or task.uncancel() > 0:
                raise
        except Exception:  # the turn recorded it: `Failed`, and result() raises it
            pass
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: record, then let it go on
            turn.finish_failed(exc)
            raise
        finally:
            # Before anyone woken by the end of the turn runs: a request sent right after
            # `await handle.result()` must not find this one still active.
            self.session._forget(self)

    def on_done(self, task: asyncio.Task[None]) -> None:
        if not self.turn.done:
            # Cancelled before its first step: the coroutine never ran, so finish it here.
            self.turn.finish_cancelled()
            self.session._forget(self)
            self.log.release()
            self.session._owner._spawn_ended(self)
        if not task.cancelled() and task.exception() is not None:
            logger.error("request %s ended abnormally", self.turn.id, exc_info=task.exception())


class RequestHandle:
    """One request sent to a session: iterate its events, await its result, cancel it.

    `async for event in handle` yields every event from the first, then the live ones, and ends
    after the terminal event (`Done`, `Failed` or `Cancelled`): late joiners get the whole
    stream, and any number of readers may iterate at once. `handle.events(after=seq)` resumes
    after a sequence number.
    """

    __slots__ = ("_request",)

    def __init__(self, request: _Request) -> None:
        self._request = request

    def __repr__(self) -> str:
        return f"<RequestHandle {self.id} session={self.session_id} {self.status}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RequestHandle):
            return self._request is other._request
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._request.turn.id)

    @property
    def id(self) -> str:
        """The request's id, carried by each of its events."""
        return self._request.turn.id

    @property
    def session_id(self) -> str:
        """The id of the session it was sent to."""
        return self._request.session.id

    @property
    def status(self) -> RequestStatus:
        """Where it is: "new", "queued", "running", "done", "failed" or "cancelled"."""
        return self._request.turn.status

    def done(self) -> bool:
        """Whether the request has ended, however."""
        return self._request.turn.done

    def add_done_callback(self, callback: Callable[[RequestHandle], None]) -> None:
        """Call `callback(handle)` once the request's task has finished, however it ended.

        Unlike the sessions' `on_request_end` hook (which runs inside the request, and not when
        a cancellation from outside cuts it short), this runs for every request exactly once:
        what counts requests in flight must hear of every end.
        """
        task = self._request.task
        assert task is not None  # spawned by `send()` before the handle is returned
        task.add_done_callback(lambda _: callback(self))

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._request.turn.log.read()

    def events(self, *, after: int = 0) -> EventReader:
        """Iterate the events numbered above `after`, then the live ones, to the terminal one."""
        return self._request.turn.log.read(after=after)

    @property
    def history(self) -> tuple[Event, ...]:
        """The events so far."""
        return self._request.turn.log.snapshot()

    async def result(self) -> RunResult:
        """Wait for the end of the request and return its result.

        When it returns, the turn is in the session's history. Cancellation-safe: cancelling the
        waiter does not cancel the request.

        Raises:
            RequestCancelled: the request was cancelled.
            ProviderError: the model call failed (or whatever else ended the request).
        """
        turn = self._request.turn
        await turn.finished.wait()
        await self._request.log.wait_released()  # and the `on_request_end` hook has run
        if turn.result is not None:
            return turn.result
        if turn.status == "cancelled":
            raise RequestCancelled(f"request {turn.id!r} was cancelled: {turn.cancel_reason}")
        assert turn.error is not None
        raise turn.error

    def cancel(self, reason: str = "cancelled by its handle") -> bool:
        """Cancel this request only; return False if it had already ended or was cancelled.

        Returns at once; the request ends soon after (await `result()` to wait for it). Its
        history stays consistent: see `Session`.
        """
        return self._request.cancel(reason)
