"""`AsyncClient`: the corral HTTP API from Python, with resumable event streams.

    async with AsyncClient("http://127.0.0.1:8000", api_key="crl_...") as client:
        session = await client.create_session()
        async for event in client.stream(session.id, "write 'hi' to a.txt, then read a.txt"):
            print(event.event, event.data)

- Event streams resume by themselves: if the connection drops, the client reconnects to
  ``GET /requests/{id}/events`` with ``Last-Event-ID`` and goes on after the last event it saw;
  nothing is repeated or lost. `stream` sends an idempotency key (its own, unless given), so a
  retried POST attaches to the request it already started instead of starting a second one.
- 429 and 503 are retried after the server's ``Retry-After`` (the server answers them before
  doing anything), up to `max_retries` times; so is a connection that could not be opened.
- Errors: `NotFoundError` (404, also a `corral.NotFound`), `BusyError` (409 of the "reject"
  policy, also a `corral.SessionBusy` with `running_request_id`), `ConflictError` (412, also a
  `corral.VersionConflict`, with the current `version` and `document`), else `APIError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from corral._json import loads
from corral._sse import SSEDecoder
from corral.errors import CorralError, NotFound, SessionBusy, VersionConflict
from corral.server.schemas import (
    AgentOut,
    MemoryOut,
    MessageOut,
    Policy,
    RequestOut,
    SessionOut,
    ToolOut,
)

__all__ = [
    "APIError",
    "AsyncClient",
    "BusyError",
    "ConflictError",
    "NotFoundError",
    "ServerEvent",
]

M = TypeVar("M", bound=BaseModel)

_RETRY_STATUSES = frozenset({429, 503})
_TERMINAL = frozenset({"done", "error", "cancelled"})
_DRAIN_S = 1.0
"""How long the end of a stream is waited for after its terminal event."""


class APIError(CorralError):
    """The server answered an error: `status`, its `detail`, the whole `body`."""

    def __init__(self, message: str, *, status: int, body: Any = None) -> None:
        # Not super(): in the subclasses below the next class is a corral error whose own
        # __init__ wants other arguments; they set those attributes themselves.
        Exception.__init__(self, message)
        self.status = status
        self.body = body
        self.detail = body.get("detail") if isinstance(body, dict) else body


class NotFoundError(APIError, NotFound):
    """404: no such session, request or key (or it is another tenant's)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class BusyError(APIError, SessionBusy):
    """409: the session is busy and the policy is "reject"; `running_request_id` names why."""

    def __init__(self, message: str, *, status: int, body: Any = None) -> None:
        APIError.__init__(self, message, status=status, body=body)
        running = body.get("running_request_id") if isinstance(body, dict) else None
        self.running_request_id = str(running or "")


class ConflictError(APIError, VersionConflict):
    """412: a memory write's version is stale; `version` and `document` are what is there now."""

    def __init__(self, message: str, *, status: int, body: Any = None) -> None:
        APIError.__init__(self, message, status=status, body=body)
        current = body.get("current") if isinstance(body, dict) else None
        self.document = MemoryOut.model_validate(current) if current else None
        self.version = self.document.version if self.document else None
        self.key = self.document.key if self.document else ""
        self.expected = None
        self.actual = self.version
        self.current = None  # a store record; over HTTP, `document` holds it


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """One event of a request's stream: `id` (its seq), `event` (its kind), `data` (JSON)."""

    id: int
    event: str
    data: dict[str, Any]

    @property
    def request_id(self) -> str:
        """The request the event belongs to."""
        return str(self.data.get("request_id", ""))

    @property
    def terminal(self) -> bool:
        """Whether it is the last event of its request: done, error or cancelled."""
        return self.event in _TERMINAL


class AsyncClient:
    """A client of the corral server.

    Args:
        base_url: Where the server listens.
        api_key: The API key (``corral keys create``); $CORRAL_API_KEY by default.
        timeout_s: Seconds for connecting and for each read (streams wait for events longer:
            the server sends a keep-alive comment while idle).
        max_retries: Retries of 429, 503 and connections that could not be opened.
        transport: An httpx transport (tests pass `httpx.ASGITransport(app)`).
        sleep: How to wait between retries (tests inject a fake).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("CORRAL_API_KEY")
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
        )
        self._max_retries = max_retries
        self._sleep = sleep

    async def aclose(self) -> None:
        """Close the connection pool. Idempotent."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- plumbing -----------------------------------------------------------------------------

    @asynccontextmanager
    async def _open(
        self, method: str, url: str, *, stream: bool = False, **kwargs: Any
    ) -> AsyncIterator[httpx.Response]:
        """Send a request, retrying 429/503/unopened connections; raise for other errors."""
        attempt = 0
        while True:
            request = self._http.build_request(method, url, **kwargs)
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.ConnectError:
                if attempt >= self._max_retries:
                    raise
                attempt += 1
                await self._sleep(_backoff_s(attempt, None))
                continue
            if response.status_code in _RETRY_STATUSES and attempt < self._max_retries:
                await response.aclose()
                attempt += 1
                await self._sleep(_backoff_s(attempt, response.headers.get("retry-after")))
                continue
            try:
                if response.status_code >= 400:
                    await response.aread()
                    raise _error(response)
                yield response
            finally:
                await response.aclose()
            return

    async def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        async with self._open(method, url, **kwargs) as response:
            return response.json() if response.content else None

    async def _model(self, model: type[M], method: str, url: str, **kwargs: Any) -> M:
        return model.model_validate(await self._json(method, url, **kwargs))

    async def _models(self, model: type[M], method: str, url: str, **kwargs: Any) -> list[M]:
        return TypeAdapter(list[model]).validate_python(  # type: ignore[valid-type]
            await self._json(method, url, **kwargs)
        )

    # -- sessions -----------------------------------------------------------------------------

    async def create_session(
        self,
        *,
        agent: str | None = None,
        policy: Policy | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SessionOut:
        """Create a session of an agent (the server's first agent by default)."""
        body = {"agent": agent, "policy": policy, "metadata": dict(metadata or {})}
        return await self._model(SessionOut, "POST", "/sessions", json=body)

    async def list_sessions(self, *, limit: int | None = None) -> list[SessionOut]:
        """List this tenant's sessions, oldest first."""
        params = {"limit": limit} if limit is not None else {}
        return await self._models(SessionOut, "GET", "/sessions", params=params)

    async def get_session(self, session_id: str) -> SessionOut:
        """Return a session."""
        return await self._model(SessionOut, "GET", f"/sessions/{session_id}")

    async def delete_session(self, session_id: str) -> None:
        """Delete a session (its requests are cancelled first)."""
        await self._json("DELETE", f"/sessions/{session_id}")

    async def messages(
        self, session_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[MessageOut]:
        """Return a session's history, after the message numbered `after`."""
        params: dict[str, int] = {"after": after}
        if limit is not None:
            params["limit"] = limit
        return await self._models(
            MessageOut, "GET", f"/sessions/{session_id}/messages", params=params
        )

    async def cancel_session(self, session_id: str) -> int:
        """Cancel every request of a session in flight; return how many."""
        body = await self._json("POST", f"/sessions/{session_id}/cancel")
        return int(body["cancelled"])

    # -- requests -----------------------------------------------------------------------------

    async def send(
        self,
        session_id: str,
        message: str,
        *,
        policy: Policy | None = None,
        idempotency_key: str | None = None,
    ) -> RequestOut:
        """Start a request and return its state at once (`wait` or `events` follow it)."""
        headers = {"idempotency-key": idempotency_key} if idempotency_key else {}
        return await self._model(
            RequestOut,
            "POST",
            f"/sessions/{session_id}/messages",
            json={"message": message, "policy": policy},
            headers=headers,
        )

    async def stream(
        self,
        session_id: str,
        message: str,
        *,
        policy: Policy | None = None,
        idempotency_key: str | None = None,
        cancel_on_disconnect: bool = False,
        reconnects: int = 5,
    ) -> AsyncIterator[ServerEvent]:
        """Start a request and yield its events to the terminal one, resuming if cut off."""
        key = idempotency_key or f"client-{uuid.uuid4().hex}"
        headers = {"accept": "text/event-stream", "idempotency-key": key}
        params = {"cancel_on_disconnect": "true"} if cancel_on_disconnect else {}
        last = 0
        request_id: str | None = None
        try:
            async with self._open(
                "POST",
                f"/sessions/{session_id}/messages",
                stream=True,
                json={"message": message, "policy": policy},
                headers=headers,
                params=params,
            ) as response:
                request_id = response.headers.get("x-request-id")
                async for event in _parse(response):
                    last = event.id
                    yield event
                    if event.terminal:
                        return
        except httpx.TransportError:
            if request_id is None:
                raise
        if request_id is None:
            return
        async for event in self.events(request_id, after=last, reconnects=reconnects):
            yield event

    async def events(
        self, request_id: str, *, after: int = 0, reconnects: int = 5
    ) -> AsyncIterator[ServerEvent]:
        """Yield a request's events after `after`, to the terminal one; reconnect if cut off."""
        last = after
        failures = 0
        while True:
            try:
                async with self._open(
                    "GET",
                    f"/requests/{request_id}/events",
                    stream=True,
                    headers={"accept": "text/event-stream", "last-event-id": str(last)},
                ) as response:
                    async for event in _parse(response):
                        last, failures = event.id, 0
                        yield event
                        if event.terminal:
                            return
            except httpx.TransportError:
                if failures >= reconnects:
                    raise
            failures += 1
            if failures > reconnects:
                raise APIError(
                    f"the event stream of {request_id!r} kept ending without a final event",
                    status=0,
                )
            await self._sleep(_backoff_s(failures, None))

    async def get_request(self, request_id: str) -> RequestOut:
        """Return a request's state (and its result once done)."""
        return await self._model(RequestOut, "GET", f"/requests/{request_id}")

    async def wait(self, request_id: str) -> RequestOut:
        """Follow a request to its end; return its final state."""
        async for _ in self.events(request_id):
            pass
        return await self.get_request(request_id)

    async def cancel_request(self, request_id: str) -> bool:
        """Cancel one request; False if it had already ended."""
        body = await self._json("DELETE", f"/requests/{request_id}")
        return bool(body["cancelled"])

    # -- agents, tools, health ----------------------------------------------------------------

    async def agents(self) -> list[AgentOut]:
        """List the agents sessions can be created with."""
        return await self._models(AgentOut, "GET", "/agents")

    async def tools(self, *, agent: str | None = None) -> list[ToolOut]:
        """List the tools, with their argument schemas."""
        params = {"agent": agent} if agent else {}
        return await self._models(ToolOut, "GET", "/tools", params=params)

    async def ready(self) -> bool:
        """Whether the server admits requests and its database answers."""
        response = await self._http.get("/readyz")
        return response.status_code == 200

    # -- memory -------------------------------------------------------------------------------

    async def memory_get(self, scope: str, key: str) -> MemoryOut | None:
        """Return a key's value and version, or None if it does not exist."""
        try:
            return await self._model(MemoryOut, "GET", f"/memory/{scope}/{key}")
        except NotFoundError:
            return None

    async def memory_list(self, scope: str) -> list[MemoryOut]:
        """List the keys of a scope."""
        return await self._models(MemoryOut, "GET", f"/memory/{scope}")

    async def memory_put(
        self,
        scope: str,
        key: str,
        value: Any,
        *,
        if_version: int | None,
        kind: Literal["json", "text"] = "json",
    ) -> MemoryOut:
        """Write a value if the key is still at `if_version` (None: create it).

        Raises:
            ConflictError: the version is stale (or the key exists, when creating).
        """
        headers = {"if-none-match": "*"} if if_version is None else {"if-match": f'"{if_version}"'}
        body = {"value": value, "kind": kind}
        return await self._model(
            MemoryOut, "PUT", f"/memory/{scope}/{key}", json=body, headers=headers
        )

    async def memory_patch(
        self, scope: str, key: str, patch: Mapping[str, Any], *, if_version: int
    ) -> MemoryOut:
        """Merge-patch a JSON object if it is still at `if_version`. Raises `ConflictError`."""
        return await self._model(
            MemoryOut,
            "PATCH",
            f"/memory/{scope}/{key}",
            json=dict(patch),
            headers={"if-match": f'"{if_version}"', "content-type": "application/merge-patch+json"},
        )

    async def memory_delete(self, scope: str, key: str, *, if_version: int) -> None:
        """Delete a key if it is still at `if_version`. Raises `ConflictError`."""
        await self._json(
            "DELETE", f"/memory/{scope}/{key}", headers={"if-match": f'"{if_version}"'}
        )

    async def memory_append(self, scope: str, key: str, item: Any) -> MemoryOut:
        """Append an item to the list at a key; no version needed."""
        return await self._model(
            MemoryOut, "POST", f"/memory/{scope}/{key}/append", json={"item": item}
        )

    async def memory_increment(self, scope: str, key: str, by: int | float = 1) -> MemoryOut:
        """Add to the number at a key; no version needed."""
        return await self._model(
            MemoryOut, "POST", f"/memory/{scope}/{key}/increment", json={"by": by}
        )


def _backoff_s(attempt: int, retry_after: str | None) -> float:
    if retry_after is not None:
        try:
            return min(60.0, max(0.0, float(retry_after)))
        except ValueError:
            pass  # an HTTP date: fall back to our own backoff
    # Exponential with full jitter: retries of many clients spread out instead of colliding.
    return random.uniform(0, min(10.0, 0.25 * 2**attempt))


def _error(response: httpx.Response) -> APIError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    detail = body.get("message") or body.get("detail") if isinstance(body, dict) else body
    message = f"{response.request.method} {response.request.url.path}: {response.status_code} "
    message += detail if isinstance(detail, str) else json.dumps(detail)
    status = response.status_code
    kind: type[APIError] = APIError
    if status == 404:
        kind = NotFoundError
    elif status == 409 and isinstance(body, dict) and body.get("running_request_id"):
        kind = BusyError
    elif status == 412:
        kind = ConflictError
    return kind(message, status=status, body=body)


async def _read_to_end(chunks: AsyncIterator[bytes]) -> None:
    """Read what is left of a finished stream, briefly: if it does not end, it is closed."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(_DRAIN_S):
            async for _ in chunks:
                pass


async def _parse(response: httpx.Response) -> AsyncIterator[ServerEvent]:
    """Yield the events of an SSE body (comments, `retry:` and events without an id skipped).

    Before the terminal event goes to the caller the rest of the body is read (the server ends
    the response right after it): a response read to its end leaves its connection in the pool
    for the next call, where one left half-read is closed.
    """
    decoder = SSEDecoder()
    chunks = response.aiter_bytes()
    async for chunk in chunks:
        for sse in decoder.feed(chunk):
            if sse.id is None or not sse.id.isdigit():
                continue
            event = ServerEvent(int(sse.id), sse.event, loads(sse.data))
            if event.terminal:
                await _read_to_end(chunks)
            yield event
