"""OpenAPI services as tools: one shared HTTP client per service, resources from method and URL.

Each operation of an OpenAPI 3.0/3.1 document becomes a tool. `_openapi_spec.py` reads the
document into operations, `_openapi_schema.py` turns its schemas into JSON Schema and validators,
`_openapi_http.py` renders requests and decodes answers; this module fetches the document and owns
the service: one `httpx.AsyncClient` (on aiohttp's transport; keep-alive, bounded pool) that every
call of its tools goes through and that `ToolRegistry.aclose()` closes.

Scheduling: a call claims the concrete URL path it touches, `url:/{host}:{port}{path}`, so paths
nest as files do. GET, HEAD, OPTIONS and TRACE read it; PUT, PATCH and DELETE write it; POST writes
its own path, the collection. Two PUTs to `/items/7` keep their order, reads of `/items/7` and
`/items/8` run at once, and a POST to `/items` waits for (and holds back) everything below it.

Retries: idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) are retried on 408, 429, 502,
503 and 504 and on connection failures, with exponential backoff and full jitter, honouring
`Retry-After`, within the call's deadline. A 500 is not retried: it usually means the handler
fails on this input, and trying again only multiplies the load and the wait. Timeouts are not
retried either: a service too slow once is likely slow again, and the deadline is better spent
reporting it. POST and PATCH are never retried, so they never run twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import httpx
from httpx_aiohttp import HttpxAiohttpClient

from corral._deadline import remaining_s
from corral._retry import Backoff
from corral.errors import (
    HTTPStatusError,
    RemoteConnectError,
    RemoteToolError,
    UsageError,
)
from corral.executors.base import State, ensure_open
from corral.scheduler import Budget
from corral.tools._openapi_http import (
    IDEMPOTENT_METHODS,
    SAFE_METHODS,
    Route,
    decode,
    excerpt,
    transport_error,
)
from corral.tools._openapi_schema import make_validator
from corral.tools._openapi_spec import check_version, operations, parse_document
from corral.tools._tool import Tool, check_name

if TYPE_CHECKING:
    from corral.tools._registry import ToolRegistry

__all__ = ["OpenAPIService", "OpenAPIStatistics", "register_openapi"]

logger = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
_CONNECT_TIMEOUT_S = 10.0
_SPEC_TIMEOUT_S = 30.0


async def register_openapi(
    reg: ToolRegistry,
    spec: str | os.PathLike[str] | Mapping[str, Any],
    *,
    base_url: str | None = None,
    namespace: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - it bounds each HTTP request, not this call
    backoff: Backoff | None = None,
    max_connections: int = 10,
) -> list[Tool]:
    """Register every operation of an OpenAPI 3.0/3.1 document with `reg`; return the tools.

    Args:
        reg: The registry; its `aclose()` closes the service's client.
        spec: An http(s) URL, a file path (JSON or YAML) or the document as a mapping.
        base_url: Where the service runs. Defaults to the first `servers` URL (of the operation,
            its path or the document), resolved against the spec's URL when relative; a document
            fetched by URL with no servers is served from that URL's root, as OpenAPI specifies.
        namespace: Prefix for tool names: `f"{namespace}-{operationId}"`.
        headers: Sent with every request, and when fetching the spec.
        timeout: Seconds for each HTTP request (connecting takes at most 10 s in any case); None
            leaves the wait for an answer to the call's own deadline.
        backoff: Retry timing for idempotent requests; defaults to `Backoff()`.
        max_connections: Most connections open to the service at once.

    Raises:
        UsageError: The spec cannot be read, is not OpenAPI 3.0/3.1, has an external or broken
            `$ref`, names no server, or a tool name is taken. Nothing is registered then.
    """
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise UsageError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if namespace is not None:
        try:
            check_name(f"{namespace}-x")
        except UsageError:
            raise UsageError(
                f"namespace {namespace!r} is not valid: use letters, digits, '_' or '-'"
            ) from None
    if not (isinstance(max_connections, int) and max_connections >= 1):
        raise UsageError(f"max_connections must be a positive int, got {max_connections!r}")
    document, spec_url, where = await _load(spec, headers, timeout)
    ops = operations(document, where, namespace)
    if not ops:
        raise UsageError(f"{where} has no operations to register")
    taken = [op.name for op in ops if op.name in reg]
    if taken:
        raise UsageError(f"tools {', '.join(map(repr, taken))} are already registered")
    routes = [Route(op, _base_url(base_url, op.server, spec_url, where)) for op in ops]
    validators = [make_validator(op.schema, document["openapi"], op.name) for op in ops]
    service = OpenAPIService(
        where=where,
        headers=headers,
        timeout_s=timeout,
        backoff=backoff or Backoff(),
        max_connections=max_connections,
    )
    try:
        reg.attach(service)
    except BaseException:
        await service.aclose()
        raise
    return [
        reg.add(service.tool(route, validate))
        for route, validate in zip(routes, validators, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class OpenAPIStatistics:
    """A service's calls in flight and the HTTP requests it has sent."""

    in_flight: int
    """Calls between validation and their result, backoff waits included."""
    requests: int
    """HTTP requests sent, retries included."""
    retries: int


class OpenAPIService:
    """The shared client of one OpenAPI service, and the calls its tools make through it.

    Made by `register_openapi` and attached to the registry, whose `aclose()` closes it.
    """

    def __init__(
        self,
        *,
        where: str,
        headers: Mapping[str, str] | None,
        timeout_s: float | None,
        backoff: Backoff,
        max_connections: int,
    ) -> None:
        self.where = where
        self._backoff = backoff
        # One client for every call: connections are kept alive and reused, and the pool bounds
        # how hard a batch of many calls can hit the service. Every pooled connection is kept
        # alive (keeping fewer reconnects the rest on every burst), and the pool is small by
        # default: httpcore checks every pooled connection on each request event, so on the
        # calculator benchmark 64 connections cost 3x the time of 4.
        # An httpx client on aiohttp's transport (httpx-aiohttp, by an httpx maintainer; the
        # OpenAI SDK offers the same): on the calculator benchmark, 100 concurrent calls cost
        # 230 ms through httpcore's asyncio path (its pool and anyio bookkeeping) and 94 ms here.
        self.client = HttpxAiohttpClient(
            headers=dict(headers or {}),
            timeout=_timeouts(timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        # Calls beyond the pool wait here, first come first served, not in httpcore's pool: its
        # queue matches waiting requests against connections in time that grows with both.
        self._slots = Budget(f"openapi:{where}", max_connections)
        self._state = State.RUNNING
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight = 0
        self._requests = 0
        self._retries = 0

    def tool(self, route: Route, validate: Callable[[Mapping[str, Any]], dict[str, Any]]) -> Tool:
        """Return the tool for one operation."""
        op = route.op
        return Tool(
            name=check_name(op.name),
            description=op.description,
            parameters=op.schema,
            fn=_OperationCall(self, route),
            is_async=True,
            validate=validate,
            read_only=op.method in SAFE_METHODS,
            claims_fn=route.claims,
            mode="async",
            process_capable=False,  # the client and its connections live in this process
            source="openapi",
        )

    async def call(self, route: Route, arguments: Mapping[str, Any]) -> Any:
        """Send one operation's request (retried if idempotent); return the decoded answer.

        Raises:
            HTTPStatusError: a status outside 2xx, after any retries.
            RemoteConnectError: the service could not be reached.
            RemoteTimeout: it did not answer in time.
            OutcomeUnknown: the connection broke while a POST or PATCH was in flight.
        """
        ensure_open(self._state, f"the OpenAPI service of {self.where}")
        self._check_loop()
        request = route.build(self.client, arguments)
        self._in_flight += 1
        try:
            return await self._send_with_retries(request)
        finally:
            self._in_flight -= 1

    def _check_loop(self) -> None:
        # Pooled connections belong to the event loop that opened them. A call from another loop
        # (mode="thread" runs async tools on a thread's own loop) would fail deep in httpcore
        # with "attached to a different loop"; say what happened instead.
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop.is_closed():
            self._loop = loop
        elif loop is not self._loop:
            raise UsageError(
                f"the tools of {self.where} are bound to the event loop of their first call and "
                "this call runs on another one (a call in mode 'thread' runs on a thread's own "
                "loop); run them in mode 'async'"
            )

    async def _send_with_retries(self, request: httpx.Request) -> Any:
        attempt = 1
        while True:
            try:
                return await self._send_once(request)
            except (HTTPStatusError, RemoteConnectError) as exc:
                delay = self._retry_delay(request.method, exc, attempt)
                if delay is None:
                    raise
                logger.info(
                    "retrying %s %s in %.3f s (attempt %d of %d failed: %s)",
                    request.method,
                    request.url,
                    delay,
                    attempt,
                    self._backoff.attempts,
                    exc,
                )
            # Sleep outside the `except`, so a cancellation here does not carry the HTTP error.
            self._retries += 1
            attempt += 1
            await asyncio.sleep(delay)

    def _retry_delay(self, method: str, exc: RemoteToolError, attempt: int) -> float | None:
        """Return the wait before trying again, or None to give up with `exc`."""
        if method not in IDEMPOTENT_METHODS:
            return None
        retry_after = None
        if isinstance(exc, HTTPStatusError):
            if exc.status not in _RETRY_STATUSES:
                return None
            retry_after = exc.retry_after_s
            if retry_after is not None and retry_after > self._backoff.max_s:
                return None  # the server asks for longer than we ever wait: its answer stands
        # Past the call's deadline the wait would only end in a timeout: better the real error.
        return self._backoff.next_delay_s(
            attempt, retry_after_s=retry_after, remaining_s=remaining_s()
        )

    async def _send_once(self, request: httpx.Request) -> Any:
        self._requests += 1
        async with self._slots:
            try:
                response = await self.client.send(request)
            except httpx.HTTPError as exc:
                raise transport_error(request, exc) from exc
        return decode(request, response)

    def statistics(self) -> OpenAPIStatistics:
        """Return the calls in flight and the requests sent so far."""
        return OpenAPIStatistics(self._in_flight, self._requests, self._retries)

    async def aclose(self) -> None:
        """Close the client and its connections. Idempotent; later calls fail with ClosedError."""
        if self._state is State.CLOSED:
            return
        self._state = State.CLOSED
        await self.client.aclose()

    def __repr__(self) -> str:
        return f"<OpenAPIService {self.where} state={self._state.value}>"


class _OperationCall:
    """The function of one operation's tool: `await fn(**arguments)` makes the call."""

    __slots__ = ("route", "service")

    def __init__(self, service: OpenAPIService, route: Route) -> None:
        self.service = service
        self.route = route

    async def __call__(self, **arguments: Any) -> Any:
        return await self.service.call(self.route, arguments)

    def __repr__(self) -> str:
        return f"<OpenAPI operation {self.route.op.method} {self.route.base}{self.route.op.path}>"


async def _load(
    spec: str | os.PathLike[str] | Mapping[str, Any],
    headers: Mapping[str, str] | None,
    timeout_s: float | None,
) -> tuple[dict[str, Any], str | None, str]:
    """Return the document, the URL it came from (if any) and how to name it in messages."""
    if isinstance(spec, Mapping):
        where = "the OpenAPI document"
        return check_version(spec, where), None, where
    if isinstance(spec, str) and "://" in spec:
        return await _fetch(spec, headers, timeout_s), spec, f"OpenAPI spec {spec!r}"
    if not isinstance(spec, str | os.PathLike):
        raise UsageError(f"spec must be a URL, a file path or a mapping, got {type(spec).__name__}")
    path = Path(spec)
    where = f"OpenAPI spec {str(path)!r}"
    try:
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {where}: {exc}") from None
    return parse_document(text, where, json_first=path.suffix.lower() == ".json"), None, where


async def _fetch(url: str, headers: Mapping[str, str] | None, timeout_s: float | None) -> Any:
    if urlsplit(url).scheme not in ("http", "https"):
        raise UsageError(f"spec URL {url!r} is not http or https")
    # A client of its own, closed at once: had the service's client fetched the spec, it would
    # keep a pooled connection bound to this event loop, and calls may run on another one
    # (`execute_sync` runs them on the registry's own loop).
    async with httpx.AsyncClient(
        headers=dict(headers or {}),
        timeout=_timeouts(timeout_s or _SPEC_TIMEOUT_S),
        follow_redirects=True,
    ) as client:
        try:
            response = await client.get(url)
        except httpx.HTTPError as exc:
            raise UsageError(
                f"cannot fetch OpenAPI spec {url!r}: {exc or type(exc).__name__}"
            ) from exc
    if not response.is_success:
        raise UsageError(
            f"fetching OpenAPI spec {url!r} returned {response.status_code}: {excerpt(response)}"
        )
    json_first = "json" in response.headers.get("content-type", "")
    return parse_document(response.text, f"OpenAPI spec {url!r}", json_first=json_first)


def _base_url(explicit: str | None, server: str | None, spec_url: str | None, where: str) -> str:
    if explicit is not None:
        url = explicit
    elif server is not None:
        url = urljoin(spec_url, server) if spec_url else server
    elif spec_url is not None:
        url = urljoin(spec_url, "/")  # OpenAPI 3: no `servers` means a server at "/"
    else:
        raise UsageError(f"{where} names no server: pass base_url=")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        hint = "" if explicit or spec_url else "; pass base_url= or load the spec from its URL"
        raise UsageError(f"base URL {url!r} of {where} is not an absolute http(s) URL{hint}")
    return url.rstrip("/")


def _timeouts(timeout_s: float | None) -> httpx.Timeout:
    # No timeout leaves the wait for an answer to the call's deadline, but an unreachable host
    # should fail fast rather than hang until then.
    connect = _CONNECT_TIMEOUT_S if timeout_s is None else min(timeout_s, _CONNECT_TIMEOUT_S)
    return httpx.Timeout(timeout_s, connect=connect)
