"""Sessions: create, list, read, delete; send a message (a request); cancel all requests."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import StringConstraints, TypeAdapter, ValidationError

from corral.server._fleet import CancelOrder
from corral.server._sse import last_event_id as resume_point
from corral.server.routes._deps import CallerDep
from corral.server.routes._render import (
    event_stream,
    gone,
    record_out,
    request_out,
    session_out,
    wants_events,
)
from corral.server.schemas import (
    CancelOut,
    CreateSession,
    ErrorOut,
    MessageOut,
    RequestOut,
    SendMessage,
    SessionOut,
)

__all__ = ["router"]

router = APIRouter(tags=["sessions"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such session (for this API key)."}
}


@router.post("/sessions", status_code=201, response_model=SessionOut)
async def create_session(body: CreateSession, caller: CallerDep) -> SessionOut:
    """Create a session of an agent; it keeps its history across requests and restarts."""
    runtime, tenant = caller
    record = await runtime.create_session(
        tenant.id, agent=body.agent, policy=body.policy, metadata=body.metadata
    )
    return session_out(record, runtime.loaded(tenant.id, record.id))


@router.get("/sessions", response_model=list[SessionOut])
async def list_sessions(
    caller: CallerDep,
    limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
) -> list[SessionOut]:
    """List the sessions of this API key's tenant, oldest first."""
    runtime, tenant = caller
    records = await runtime.store.list_sessions(tenant.id, limit=limit)
    return [session_out(r, runtime.loaded(tenant.id, r.id)) for r in records]


@router.get("/sessions/{session_id}", response_model=SessionOut, responses=_NOT_FOUND)
async def get_session(session_id: str, caller: CallerDep) -> SessionOut:
    """Return a session, with the requests it has in flight."""
    runtime, tenant = caller
    record = await runtime.store.get_session(tenant.id, session_id)
    return session_out(record, runtime.loaded(tenant.id, session_id))


@router.delete("/sessions/{session_id}", status_code=204, responses=_NOT_FOUND)
async def delete_session(session_id: str, caller: CallerDep) -> Response:
    """Delete a session: cancel its requests, drop its history, memory and working directory."""
    runtime, tenant = caller
    await runtime.delete_session(tenant.id, session_id)
    return Response(status_code=204)


@router.get(
    "/sessions/{session_id}/messages", response_model=list[MessageOut], responses=_NOT_FOUND
)
async def list_messages(
    session_id: str,
    caller: CallerDep,
    after: Annotated[int, Query(ge=0, description="Only messages with a larger seq.")] = 0,
    limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
) -> list[MessageOut]:
    """Return the session's history: every finished turn, in order, numbered without gaps."""
    runtime, tenant = caller
    stored = await runtime.store.list_messages(tenant.id, session_id, after_seq=after, limit=limit)
    return [
        MessageOut(
            seq=m.seq, request_id=m.request_id, message=m.message.to_dict(), created_at=m.created_at
        )
        for m in stored
    ]


_IDEMPOTENCY_KEY = TypeAdapter(Annotated[str, StringConstraints(min_length=1, max_length=200)])
_FLAG = TypeAdapter(bool)

_MESSAGE_OPTIONS: list[dict[str, Any]] = [
    {
        "name": "accept",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "`text/event-stream`: the response is the request's SSE stream; "
        "otherwise JSON with the request's id.",
    },
    {
        "name": "idempotency-key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
        "description": "A retry with the same key attaches to the first request's stream "
        "instead of starting a second one.",
    },
    {
        "name": "last-event-id",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "With a retried idempotency key: resume the stream after this event.",
    },
    {
        "name": "cancel_on_disconnect",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean", "default": False},
        "description": "Cancel the request if the SSE client disconnects.",
    },
]
"""The message route's optional headers and query flag, as OpenAPI parameters."""


def _message_options(request: Request) -> tuple[str | None, str | None, str | None, bool]:
    """Return the message route's Accept, Idempotency-Key, Last-Event-ID and cancel flag.

    Read here, and declared to OpenAPI in `_MESSAGE_OPTIONS`, rather than taken as FastAPI
    `Header()` and `Query()` parameters: FastAPI analyses each such parameter's annotation on
    every request, and these four were 5% of a whole agent run's instructions under the server
    bench (`corral bench server --instructions`). Validated by pydantic as FastAPI would, and a
    bad value answers 422 the same way.
    """
    headers = request.headers
    key = headers.get("idempotency-key")
    flag = request.query_params.get("cancel_on_disconnect")
    cancel = False
    errors: list[dict[str, Any]] = []
    try:
        if key is not None:
            _IDEMPOTENCY_KEY.validate_python(key)
    except ValidationError as exc:
        errors += [{**error, "loc": ("header", "idempotency-key")} for error in exc.errors()]
    try:
        if flag is not None:
            cancel = _FLAG.validate_python(flag)
    except ValidationError as exc:
        errors += [{**error, "loc": ("query", "cancel_on_disconnect")} for error in exc.errors()]
    if errors:
        raise RequestValidationError(errors)
    return headers.get("accept"), key, headers.get("last-event-id"), cancel


@router.post(
    "/sessions/{session_id}/messages",
    openapi_extra={"parameters": _MESSAGE_OPTIONS},
    status_code=202,
    response_model=RequestOut,
    responses={
        200: {
            "description": "With `Accept: text/event-stream`: the request's events as SSE "
            "(event id = the event's seq), ending with `done`, `error` or `cancelled`. Without "
            "it, 200 also answers a retry whose Idempotency-Key names a request already made.",
            "content": {"text/event-stream": {}},
        },
        409: {"model": ErrorOut, "description": "Policy 'reject': a request is in flight."},
        410: {"model": ErrorOut, "description": "A retried request's events are gone."},
        503: {"model": ErrorOut, "description": "The server is shutting down."},
        **_NOT_FOUND,
    },
)
async def send_message(
    session_id: str, body: SendMessage, caller: CallerDep, request: Request
) -> Response:
    """Send a user message: start a request, and stream its events or return its id."""
    runtime, tenant = caller
    accept, idempotency_key, last_event_id, cancel_on_disconnect = _message_options(request)
    attached = await runtime.submit(
        tenant.id,
        session_id,
        body.message,
        policy=body.policy,
        idempotency_key=idempotency_key,
    )
    live = attached.live
    if wants_events(accept):
        if live is None:
            assert attached.record is not None
            raise gone(attached.record)
        after = resume_point(last_event_id, None)
        return event_stream(runtime, live, after=after, cancel_on_disconnect=cancel_on_disconnect)
    if live is not None:
        out = request_out(live, created=attached.created)
    else:
        assert attached.record is not None
        out = record_out(attached.record, created=False)
    return JSONResponse(
        out.model_dump(mode="json"),
        status_code=202 if attached.created else 200,
        headers={"location": f"/requests/{out.id}"},
    )


@router.post("/sessions/{session_id}/cancel", response_model=CancelOut, responses=_NOT_FOUND)
async def cancel_session(session_id: str, caller: CallerDep) -> CancelOut:
    """Cancel every request of the session in flight (running or queued)."""
    runtime, tenant = caller
    await runtime.store.get_session(tenant.id, session_id)
    reason = "cancelled with every request of its session"
    order = CancelOrder(tenant.id, "session", session_id, reason)
    return CancelOut(cancelled=await runtime.cancel(order))
