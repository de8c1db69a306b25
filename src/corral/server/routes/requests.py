"""Requests: state, the event stream (resumable), cancellation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Response

from corral.server._fleet import CancelOrder
from corral.server._sse import last_event_id as resume_point
from corral.server.routes._deps import CallerDep
from corral.server.routes._render import event_stream, gone, record_out, request_out
from corral.server.schemas import CancelOut, ErrorOut, RequestOut

__all__ = ["router"]

router = APIRouter(tags=["requests"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such request (for this API key)."}
}


@router.get("/requests/{request_id}", response_model=RequestOut, responses=_NOT_FOUND)
async def get_request(request_id: str, caller: CallerDep) -> RequestOut:
    """Return a request's state, and its result once done."""
    runtime, tenant = caller
    live = runtime.live(tenant.id, request_id)
    if live is not None:
        return request_out(live)
    return record_out(await runtime.request_record(tenant.id, request_id))


@router.get(
    "/requests/{request_id}/events",
    response_class=Response,
    responses={
        200: {
            "description": "The request's events as SSE, after `Last-Event-ID` (or `?after=`).",
            "content": {"text/event-stream": {}},
        },
        410: {"model": ErrorOut, "description": "The events are no longer retained."},
        **_NOT_FOUND,
    },
)
async def request_events(
    request_id: str,
    caller: CallerDep,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[int | None, Query(ge=0, description="Resume after this seq.")] = None,
    cancel_on_disconnect: Annotated[bool, Query()] = False,
) -> Response:
    """Stream a request's events; a reconnecting client resumes after the last id it saw."""
    runtime, tenant = caller
    live = runtime.live(tenant.id, request_id)
    if live is None:
        record = await runtime.request_record(tenant.id, request_id)
        if record.status in ("queued", "running"):
            # In the database as running, but not here: another server of the fleet runs it.
            raise HTTPException(
                421,
                f"request {request_id!r} runs on another server; its events are served there "
                f"(route a session's calls to one server), GET /requests/{request_id} has its "
                "state",
            )
        raise gone(record)
    return event_stream(
        runtime,
        live,
        after=resume_point(last_event_id, after),
        cancel_on_disconnect=cancel_on_disconnect,
    )


@router.delete("/requests/{request_id}", response_model=CancelOut, responses=_NOT_FOUND)
async def cancel_request(request_id: str, caller: CallerDep) -> CancelOut:
    """Cancel one request; its stream ends with a `cancelled` event. 0 if it had ended."""
    runtime, tenant = caller
    reason = f"cancelled by DELETE /requests/{request_id}"
    if runtime.live(tenant.id, request_id) is None:
        record = await runtime.request_record(tenant.id, request_id)  # 404 unless the tenant's
        if record.status not in ("queued", "running"):
            return CancelOut(cancelled=0)
        # Running, but not here: on another server of the fleet, if there is one.
    order = CancelOrder(tenant.id, "request", request_id, reason)
    return CancelOut(cancelled=await runtime.cancel(order))
