"""Fake LLM servers for tests: real HTTP, real SSE, in OpenAI's and Anthropic's wire formats.

    fake = FakeOpenAI(Reply(text="hello"), Reply(calls=[Call("add", '{"a": 1, "b": 2}')]))
    async with fake.serve() as base_url:          # uvicorn on 127.0.0.1, in this event loop
        provider = OpenAIProvider(base_url=base_url, api_key="test")
        ...
    fake.arrivals                                 # every request: time, status, JSON body

- Replies are scripted: a queue (`FakeOpenAI(*replies)`, `fake.add(...)`), then `respond(body)`,
  then `default`. A request with nothing to answer gets a 500 naming the problem.
- Faults, per reply: an error `status` (with `retry_after`), `cut_after` N events (the connection
  closes mid-body), `first_token_delay_s` (headers at once, the first event late), `error_event`
  (an error event in the stream after `cut_after` events, or at once).
- `rate_limit=ServerRateLimit(per_s, burst)` (or `fake.limit(...)` later): a token bucket;
  requests beyond it get 429 with Retry-After (and OpenAI's `retry-after-ms`), are recorded with
  `limited=True`, and consume no scripted reply.

`FakeOpenAI.serve()` yields the URL the OpenAI SDK wants as base_url (".../v1");
`FakeAnthropic.serve()` the root the Anthropic SDK wants.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.servers import running_asgi

__all__ = [
    "Arrival",
    "Call",
    "FakeAnthropic",
    "FakeLLMServer",
    "FakeOpenAI",
    "Reply",
    "ServerRateLimit",
]


@dataclass(frozen=True)
class Call:
    """A tool call the fake model makes; `arguments` is the raw JSON text it streams."""

    name: str
    arguments: str = "{}"
    id: str | None = None


@dataclass(frozen=True)
class Reply:
    """One answer of the fake model, or one fault.

    Args:
        text: Streamed in pieces of `piece_chars` characters.
        calls: Tool calls, streamed one after the other, arguments in pieces of `piece_chars`.
        finish: The finish/stop reason; by default the wire's "tool calls" or "stop" reason.
        input_tokens, output_tokens: The usage reported.
        piece_chars: Characters per text or argument delta.
        status: Not 200: answer this status with the wire's error body instead of a stream.
        retry_after: The Retry-After header sent with `status`.
        cut_after: Close the connection after this many SSE events, mid-body.
        first_token_delay_s: Send the headers, then wait this long before the first event.
        error_event: Send an error event of this type (e.g. "overloaded_error") after
            `cut_after` events (or first), then end the stream.
        end_delay_s: Wait this long after the last event before ending the body, as a server
            whose last write and end of body travel apart.
    """

    text: str = ""
    calls: Sequence[Call] = ()
    finish: str | None = None
    input_tokens: int = 11
    output_tokens: int = 7
    piece_chars: int = 3
    status: int = 200
    retry_after: str | None = None
    cut_after: int | None = None
    first_token_delay_s: float = 0.0
    error_event: str | None = None
    end_delay_s: float = 0.0


@dataclass(frozen=True)
class ServerRateLimit:
    """A server-side token bucket: `per_s` requests a second, `burst` at once."""

    per_s: float
    burst: int = 1


@dataclass(frozen=True)
class Arrival:
    """One request as the server saw it: when (`time.monotonic()`), its answer, its body."""

    at: float
    status: int
    body: dict[str, Any]
    limited: bool = False
    """Refused by the server's rate limit (429)."""

    @property
    def tag(self) -> str:
        """The text of the last user message: tests put a per-caller tag there."""
        for message in reversed(self.body.get("messages", [])):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):
                    return " ".join(b.get("text", "") for b in content if isinstance(b, dict))
                return str(content)
        return ""


class _Bucket:
    def __init__(self, limit: ServerRateLimit) -> None:
        self.per_s = limit.per_s
        self.burst = float(limit.burst)
        self.level = self.burst
        self.updated = time.monotonic()

    def take(self) -> float | None:
        """Take a token; or return the seconds until one is there."""
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.updated) * self.per_s)
        self.updated = now
        if self.level >= 1:
            self.level -= 1
            return None
        return (1 - self.level) / self.per_s


class FakeLLMServer:
    """Scripted replies, faults, a rate limit and an arrival log; subclasses speak a wire."""

    path: ClassVar[str]
    root_suffix: ClassVar[str] = ""

    def __init__(
        self,
        *replies: Reply,
        respond: Callable[[dict[str, Any]], Reply] | None = None,
        default: Reply | None = None,
        rate_limit: ServerRateLimit | None = None,
    ) -> None:
        self.replies: collections.deque[Reply] = collections.deque(replies)
        self.respond = respond
        self.default = default
        self.arrivals: list[Arrival] = []
        self.headers: list[dict[str, str]] = []
        """The headers of every request, lower-cased names, in arrival order."""
        self.client_ports: list[int] = []
        """The client's port of every request: one port, one kept-alive connection."""
        self._bucket = _Bucket(rate_limit) if rate_limit is not None else None
        self._ids = itertools.count(1)
        self.app = Starlette(routes=[Route(self.path, self._handle, methods=["POST"])])

    def add(self, *replies: Reply) -> None:
        """Queue more replies."""
        self.replies.extend(replies)

    def limit(self, rate_limit: ServerRateLimit | None) -> None:
        """Start (with a full bucket) or stop the server-side rate limit."""
        self._bucket = _Bucket(rate_limit) if rate_limit is not None else None

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the requests that were not refused by the rate limit."""
        return [a.body for a in self.arrivals if not a.limited]

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serve on 127.0.0.1; yield the base URL for the SDK."""
        async with running_asgi(self.app) as url:
            yield url + self.root_suffix

    async def _handle(self, request: Request) -> Response:
        body = await request.json()
        self.headers.append(dict(request.headers))
        self.client_ports.append(request.client.port if request.client else 0)
        at = time.monotonic()
        if self._bucket is not None and (wait := self._bucket.take()) is not None:
            self.arrivals.append(Arrival(at, 429, body, limited=True))
            return self.limited(wait)
        reply = self._next(body)
        self.arrivals.append(Arrival(at, reply.status if reply else 500, body))
        if reply is None:
            return self.error(500, "api_error", "the fake has no reply scripted for this request")
        if reply.status != 200:
            headers = {"retry-after": reply.retry_after} if reply.retry_after else {}
            return self.error(reply.status, _error_type(reply.status), "scripted fault", headers)
        if body.get("stream"):
            return _SSEResponse(self.events(reply, body), reply)
        return JSONResponse(self.whole(reply, body))

    def _next(self, body: dict[str, Any]) -> Reply | None:
        if self.replies:
            return self.replies.popleft()
        if self.respond is not None:
            return self.respond(body)
        return self.default

    def next_id(self) -> int:
        return next(self._ids)

    # -- the wire, per subclass ---------------------------------------------------------------

    def limited(self, wait_s: float) -> Response:
        raise NotImplementedError

    def error(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        raise NotImplementedError

    def events(self, reply: Reply, body: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def whole(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class FakeOpenAI(FakeLLMServer):
    """An OpenAI-compatible `/v1/chat/completions`: chat.completion.chunk SSE, or JSON."""

    path = "/v1/chat/completions"
    root_suffix = "/v1"

    def limited(self, wait_s: float) -> Response:
        headers = {
            "retry-after": str(math.ceil(wait_s)),
            "retry-after-ms": str(math.ceil(wait_s * 1000)),
        }
        return self.error(429, "rate_limit_exceeded", "Rate limit reached", headers)

    def error(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        return JSONResponse(body, status_code=status, headers=headers)

    def events(self, reply: Reply, body: dict[str, Any]) -> list[str]:
        n = self.next_id()
        head = {"id": f"chatcmpl-{n}", "object": "chat.completion.chunk", "created": 0}
        head["model"] = body.get("model", "")
        usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            data = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage_wanted:
                data["usage"] = None
            return _sse(data)

        out = [chunk({"role": "assistant", "content": ""})]
        out += [chunk({"content": p}) for p in _pieces(reply.text, reply.piece_chars)]
        for i, call in enumerate(reply.calls):
            call_id = call.id or f"call_{n}_{i}"
            function = {"name": call.name, "arguments": ""}
            first = {"index": i, "id": call_id, "type": "function", "function": function}
            out.append(chunk({"tool_calls": [first]}))
            for piece in _pieces(call.arguments, reply.piece_chars):
                out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
        finish = reply.finish or ("tool_calls" if reply.calls else "stop")
        out.append(chunk({}, finish))
        if usage_wanted:
            out.append(_sse({**head, "choices": [], "usage": _openai_usage(reply)}))
        out.append("data: [DONE]\n\n")
        if reply.error_event is not None:
            error = {"error": {"message": "scripted stream error", "type": reply.error_event}}
            out.insert(reply.cut_after or 0, _sse(error))
        return out

    def whole(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        n = self.next_id()
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.calls:
            message["tool_calls"] = [
                {
                    "id": c.id or f"call_{n}_{i}",
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for i, c in enumerate(reply.calls)
            ]
        finish = reply.finish or ("tool_calls" if reply.calls else "stop")
        return {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", ""),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": _openai_usage(reply),
        }


class FakeAnthropic(FakeLLMServer):
    """Anthropic's `/v1/messages`: message_start ... message_stop SSE, or JSON."""

    path = "/v1/messages"

    def limited(self, wait_s: float) -> Response:
        headers = {"retry-after": str(math.ceil(wait_s))}
        return self.error(429, "rate_limit_error", "Rate limited", headers)

    def error(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        kind = {"rate_limit_exceeded": "rate_limit_error", "server_error": "api_error"}.get(
            kind, kind
        )
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return JSONResponse(body, status_code=status, headers=headers)

    def events(self, reply: Reply, body: dict[str, Any]) -> list[str]:
        n = self.next_id()
        message = {
            "id": f"msg_{n}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": reply.input_tokens, "output_tokens": 1},
        }
        out = [_sse({"type": "message_start", "message": message}, "message_start")]
        index = 0
        if reply.text:
            out.append(_block_start(index, {"type": "text", "text": ""}))
            out.append(_sse({"type": "ping"}, "ping"))
            out.extend(
                _block_delta(index, {"type": "text_delta", "text": piece})
                for piece in _pieces(reply.text, reply.piece_chars)
            )
            out.append(_sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
            index += 1
        for i, call in enumerate(reply.calls):
            block = {"type": "tool_use", "id": call.id or f"toolu_{n}_{i}", "name": call.name}
            out.append(_block_start(index, {**block, "input": {}}))
            out.extend(
                _block_delta(index, {"type": "input_json_delta", "partial_json": piece})
                for piece in _pieces(call.arguments, reply.piece_chars)
            )
            out.append(_sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
            index += 1
        stop = reply.finish or ("tool_use" if reply.calls else "end_turn")
        delta = {"stop_reason": stop, "stop_sequence": None}
        usage = {"output_tokens": reply.output_tokens}
        out.append(_sse({"type": "message_delta", "delta": delta, "usage": usage}, "message_delta"))
        out.append(_sse({"type": "message_stop"}, "message_stop"))
        if reply.error_event is not None:
            error = {"type": "error", "error": {"type": reply.error_event, "message": "scripted"}}
            out.insert(reply.cut_after or 0, _sse(error, "error"))
        return out

    def whole(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError("the Anthropic fake only streams")


# -- helpers ------------------------------------------------------------------------------------


class _SSEResponse(Response):
    """Send SSE events one body message each; apply the reply's delay and cut."""

    def __init__(self, events: list[str], reply: Reply) -> None:
        super().__init__(media_type="text/event-stream")
        self._events = events
        self._reply = reply

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if self._reply.first_token_delay_s and await _client_left(
            receive, self._reply.first_token_delay_s
        ):
            return
        events = self._events
        cut = self._reply.cut_after
        if self._reply.error_event is not None:
            cut = None
            events = events[: (self._reply.cut_after or 0) + 1]  # the error event ends it
        try:
            for i, event in enumerate(events):
                if cut is not None and i >= cut:
                    # Return without the final body message: uvicorn closes the connection
                    # mid-body, which the client sees as an incomplete chunked read.
                    return
                await send(
                    {"type": "http.response.body", "body": event.encode(), "more_body": True}
                )
            if self._reply.end_delay_s:
                await asyncio.sleep(self._reply.end_delay_s)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            return  # the client went away


async def _client_left(receive: Receive, delay_s: float) -> bool:
    """Wait `delay_s`, or less if the client disconnects first; return whether it did."""
    try:
        async with asyncio.timeout(delay_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return True
    except TimeoutError:
        return False


def _sse(data: dict[str, Any], event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def _block_start(index: int, block: dict[str, Any]) -> str:
    data = {"type": "content_block_start", "index": index, "content_block": block}
    return _sse(data, "content_block_start")


def _block_delta(index: int, delta: dict[str, Any]) -> str:
    return _sse(
        {"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta"
    )


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _openai_usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_exceeded"
    if status == 529:
        return "overloaded_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"
