"""Turning runtime objects into API bodies and streams."""

from __future__ import annotations

from fastapi import HTTPException

from corral.agent import Cancelled, Done, Failed
from corral.server._runtime import LiveRequest, Runtime
from corral.server._sse import EventStream
from corral.server.schemas import RequestOut, SessionOut
from corral.sessions import Session
from corral.state import RequestRecord, SessionRecord

__all__ = ["event_stream", "gone", "request_out", "session_out", "wants_events"]


def wants_events(accept: str | None) -> bool:
    """Whether the client asked for the SSE stream (``Accept: text/event-stream``)."""
    return accept is not None and "text/event-stream" in accept.lower()


def request_out(live: LiveRequest, *, created: bool = True) -> RequestOut:
    """Describe a live request from its handle and events."""
    handle = live.handle
    history = handle.history
    result = error = None
    last = history[-1] if history else None
    if isinstance(last, Done):
        result = last.result.to_dict()
    elif isinstance(last, Failed):
        error = str(last.error)
    elif isinstance(last, Cancelled):
        error = last.reason
    return RequestOut(
        id=handle.id,
        session_id=live.session_id,
        status=handle.status,
        error=error,
        events=len(history),
        result=result,
        created=created,
    )


def record_out(record: RequestRecord, *, created: bool = True) -> RequestOut:
    """Describe a request the store remembers but this server no longer holds."""
    return RequestOut(
        id=record.id,
        session_id=record.session_id,
        status=record.status,
        error=record.error,
        events=None,
        result=None,
        created=created,
    )


def session_out(record: SessionRecord, session: Session | None) -> SessionOut:
    """Describe a session from its record (and its in-memory requests, if loaded)."""
    meta = dict(record.metadata)
    user = meta.get("user")
    return SessionOut(
        id=record.id,
        agent=str(meta.get("agent", "")),
        policy=meta.get("policy", "concurrent"),  # type: ignore[arg-type]
        metadata=user if isinstance(user, dict) else {},
        created_at=record.created_at,
        messages=record.last_seq,
        active_requests=[h.id for h in session.requests] if session is not None else [],
    )


def event_stream(
    runtime: Runtime, live: LiveRequest, *, after: int, cancel_on_disconnect: bool
) -> EventStream:
    """Return the SSE response of a live request's events after `after`."""
    handle = live.handle

    def disconnected() -> None:
        if cancel_on_disconnect:
            handle.cancel("the client disconnected from the stream (cancel_on_disconnect)")

    return EventStream(
        handle.events(after=after),
        ping_s=runtime.settings.sse_ping_s,
        on_disconnect=disconnected,
        headers={"x-request-id": handle.id, "location": f"/requests/{handle.id}"},
        counter=runtime.streaming(),
    )


def gone(record: RequestRecord) -> HTTPException:
    """Return the 410 for the events of a request this server no longer holds."""
    return HTTPException(
        410,
        f"the events of request {record.id!r} are no longer retained (it is {record.status}); "
        f"GET /requests/{record.id} has its state",
    )
