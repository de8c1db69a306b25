"""OpenAI-compatible chat completions: OpenAI, vLLM, Ollama, llama.cpp.

One streamed call per `stream()`; tool-call deltas are assembled into complete calls as they
arrive. The official SDK builds the client (key, base URL, headers) and answers whole
(non-streamed) calls; streams go over `_wire`'s direct aiohttp transport by default, which sends
the SDK's headers and costs a quarter of the SDK's request path in CPU (the module says why), or
through the SDK itself (`transport="sdk"`, and always for a client the caller brings). SDK errors
are mapped to corral's at one boundary (`_map_error`), and the SDK's own retries are off:
`LimitedProvider` owns retries, so a fleet shares one backoff and one pause.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

import httpx2
import openai

from corral._json import dumps
from corral._types import AsyncResource
from corral.errors import ProviderError, ProviderRejected, ProviderUnavailable, UsageError
from corral.executors.base import State, ensure_open
from corral.messages import Message
from corral.providers._capabilities import CapabilityTable, is_reasoning_model
from corral.providers._errors import (
    after_output,
    failed_connection,
    retry_after_from,
    status_error,
    type_error,
)
from corral.providers._wire import WireClient, wire_client
from corral.providers.base import (
    Finish,
    ModelCapabilities,
    ModelRequest,
    ProviderEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallDone,
    ToolSpec,
    Usage,
)
from corral.tools import ToolCall

__all__ = ["OpenAIProvider", "to_openai_messages", "to_openai_tools"]

logger = logging.getLogger(__name__)

# Local servers (vLLM, Ollama, llama.cpp) take any key, but the SDK refuses to start without one.
_NO_KEY = "not-needed"


class OpenAIProvider(AsyncResource):
    """A model behind an OpenAI-compatible `/chat/completions` endpoint.

    Args:
        base_url: The API root, e.g. "http://localhost:11434/v1" for Ollama; the SDK's default
            (OPENAI_BASE_URL or api.openai.com) when None.
        api_key: The key; OPENAI_API_KEY when None. A local server (base_url given) needs none.
        client: An `AsyncOpenAI` to use instead of making one; a copy with `max_retries=0` is
            used, and the caller keeps closing it.
        name: The provider's name in errors and rate-limit keys ("vllm", "ollama"...).
        timeout_s: Connect and read timeout of each request; a read timeout also bounds the wait
            for the first token.
        capabilities: Overrides of the capability table, glob pattern to capabilities.
        stream_usage: Ask for the usage chunk (`stream_options.include_usage`); turn off for
            servers that reject it.
        transport: How streams travel: "direct" (aiohttp, with the SDK client's URL and
            headers; the default) or "sdk" (the SDK's own request path). A `client` given by
            the caller always uses "sdk", as it may carry its own auth or transport.

    One instance serves any number of concurrent streams (the SDK's connection pool is shared).
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: openai.AsyncOpenAI | None = None,
        name: str = "openai",
        timeout_s: float = 60.0,
        capabilities: Mapping[str, ModelCapabilities] | None = None,
        stream_usage: bool = True,
        transport: Literal["direct", "sdk"] | None = None,
    ) -> None:
        self.name = name
        self._table = CapabilityTable("openai", capabilities)
        self._stream_usage = stream_usage
        self._owns_client = client is None
        if client is None:
            if api_key is None and base_url is not None:
                api_key = os.environ.get("OPENAI_API_KEY") or _NO_KEY
            try:
                # The SDK's aiohttp transport (its `aiohttp` extra): the same client API, and
                # about half the CPU per streamed call of the default httpx transport.
                client = openai.AsyncOpenAI(
                    api_key=api_key,
                    base_url=base_url,
                    timeout=timeout_s,
                    max_retries=0,
                    http_client=openai.DefaultAioHttpClient(timeout=timeout_s),
                )
            except openai.OpenAIError as exc:
                raise UsageError(f"cannot configure provider {name!r}: {exc}") from exc
            self._client = client
        else:
            if transport == "direct":
                raise UsageError(
                    f"provider {name!r}: transport 'direct' needs no client; a client given "
                    "streams through the SDK (transport='sdk')"
                )
            self._client = client.with_options(max_retries=0)
        self._wire: WireClient | None = None
        if self._owns_client and transport != "sdk":
            self._wire = wire_client(self._client, "/chat/completions", timeout_s)
        self._state = State.RUNNING

    def capabilities(self, model: str) -> ModelCapabilities:
        """Return what `model` accepts, from the overrides and the built-in table."""
        return self._table.lookup(model)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        """Stream one chat completion: text, tool calls as they assemble, usage, then `Finish`.

        A `ToolCallDone` is yielded as soon as the next call starts (OpenAI streams calls in
        order), so a caller can start a tool while the model still writes the next call.

        Raises:
            RateLimited: 429, with the server's Retry-After.
            ProviderUnavailable: 5xx, connection failures and timeouts, before any output.
            ProviderRejected: other 4xx.
            StreamBroken: any failure after output reached the caller.
        """
        ensure_open(self._state, f"provider {self.name!r}")
        caps = self.capabilities(request.model)
        params = self._params(request, caps)
        where = f"{self.name} model {request.model!r}"
        if request.tools and not caps.streams_tool_calls:
            events = self._complete_once(params)
        else:
            events = self._stream(params, where)
        delivered = False
        try:
            # `aclosing`: if our caller stops early, the inner generator closes now (and with it
            # the response), not whenever the garbage collector finalizes it.
            async with aclosing(events):
                async for event in events:
                    delivered = delivered or not isinstance(event, Usage)
                    yield event
        except (openai.OpenAIError, httpx2.HTTPError, json.JSONDecodeError) as exc:
            error = _map_error(where, exc)
            error.__cause__ = exc
            error = after_output(error, delivered=delivered)
            raise error from error.__cause__
        except ProviderError as exc:
            error = after_output(exc, delivered=delivered)
            if error is exc:
                raise
            raise error from exc

    async def _stream(
        self, params: dict[str, Any], where: str
    ) -> AsyncGenerator[ProviderEvent, None]:
        body = {**params, "stream": True}
        body.update(body.pop("extra_body", None) or {})
        if self._stream_usage:
            body["stream_options"] = {"include_usage": True}
        reader = _ChunkReader()
        chunks = self._wire.stream(body, where) if self._wire else self._sdk_chunks(body)
        try:
            # `aclosing`: leaving early (the caller stopped reading, or was cancelled) closes
            # the response now, so the connection is not left streaming to nobody.
            async with aclosing(chunks):
                async for chunk in chunks:
                    for event in reader.feed(chunk):
                        yield event
        except (openai.APIConnectionError, httpx2.HTTPError, ProviderUnavailable):
            if reader.finish is None:
                raise
            # The answer was complete; only the trailing usage chunk or [DONE] was lost.
            logger.debug("%s: stream cut after its finish reason; usage unknown", where)
        if reader.finish is None:
            raise ProviderUnavailable(f"{where}: the stream ended before a finish reason")
        if reader.usage is not None:
            yield reader.usage
        yield Finish(reader.finish)

    async def _sdk_chunks(self, body: dict[str, Any]) -> AsyncGenerator[object, None]:
        # The SDK's generic `post` (its documented way to call any endpoint), not
        # `chat.completions.create`: the body is already plain JSON, and create() would walk it
        # through the SDK's TypedDict transform, then build a pydantic object per chunk; the two
        # were ~40% of a call's CPU. Chunks come back as dicts; auth, errors, timeouts and the
        # SSE decoding (including `error` events) are the SDK's.
        stream = await self._client.post(
            "/chat/completions",
            cast_to=object,
            body=body,
            stream=True,
            stream_cls=openai.AsyncStream[object],
        )
        async with stream:
            async for chunk in stream:
                yield chunk

    async def _complete_once(self, params: dict[str, Any]) -> AsyncGenerator[ProviderEvent, None]:
        """For models that do not stream tool calls: one whole answer, told as events."""
        completion = await self._client.chat.completions.create(**params, stream=False)
        if not completion.choices:
            raise ProviderUnavailable(f"{self.name}: the answer has no choices")
        choice = completion.choices[0]
        if choice.message.content:
            yield TextDelta(choice.message.content)
        for index, call in enumerate(choice.message.tool_calls or ()):
            function = getattr(call, "function", None)
            name = getattr(function, "name", None) or ""
            arguments = getattr(function, "arguments", None) or ""
            yield ToolCallDelta(index, call.id, name, arguments)
            yield ToolCallDone(ToolCall(call.id, name, arguments or "{}"))
        if completion.usage is not None:
            yield Usage(completion.usage.prompt_tokens, completion.usage.completion_tokens)
        yield Finish(choice.finish_reason or "stop")

    def _params(self, request: ModelRequest, caps: ModelCapabilities) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model,
            "messages": to_openai_messages(request.messages),
        }
        if request.tools:
            params["tools"] = to_openai_tools(request.tools)
            # Reasoning models answer 400 to this field, or ignore it: never send it to them.
            if request.parallel_tool_calls is not None and caps.parallel_tool_calls:
                params["parallel_tool_calls"] = request.parallel_tool_calls
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.seed is not None:
            params["seed"] = request.seed
        if request.max_tokens is not None:
            # Reasoning models reject `max_tokens`; local servers may not know the new name.
            key = "max_completion_tokens" if is_reasoning_model(request.model) else "max_tokens"
            params[key] = request.max_tokens
        if request.extra:
            params["extra_body"] = dict(request.extra)
        return params

    async def aclose(self) -> None:
        """Close the client's connections if this provider made the client. Idempotent."""
        if self._state is State.CLOSED:
            return
        self._state = State.CLOSED
        if self._wire is not None:
            await self._wire.aclose()
        if self._owns_client:
            await self._client.close()

    def __repr__(self) -> str:
        return f"<OpenAIProvider {self.name!r} {self._client.base_url} state={self._state.value}>"


def to_openai_messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """Translate corral messages to chat-completion messages."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "tool":
            out.append(
                {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
            )
        elif message.role == "assistant":
            if not message.content and not message.tool_calls:
                # An empty answer (a turn cancelled before any text) carries nothing, and OpenAI
                # rejects an assistant message with neither content nor tool calls.
                continue
            entry: dict[str, Any] = {"role": "assistant", "content": message.content or None}
            if message.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": _arguments_text(call)},
                    }
                    for call in message.tool_calls
                ]
            out.append(entry)
        else:
            out.append({"role": message.role, "content": message.content})
    return out


def to_openai_tools(tools: tuple[ToolSpec, ...]) -> list[dict[str, Any]]:
    """Translate tool specs to chat-completion function tools."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": dict(t.parameters),
            },
        }
        for t in tools
    ]


def _arguments_text(call: ToolCall) -> str:
    if isinstance(call.arguments, str):
        return call.arguments
    return dumps(dict(call.arguments)).decode()


class _ChunkReader:
    """Turn chat.completion.chunk dicts into events; keeps the usage and finish reason.

    Usage is held back and yielded after the last chunk, so that `Finish` comes last: OpenAI
    sends the usage chunk after the one with the finish reason.
    """

    __slots__ = ("_calls", "finish", "usage")

    def __init__(self) -> None:
        self._calls = _ToolCalls()
        self.usage: Usage | None = None
        self.finish: str | None = None

    def feed(self, chunk: object) -> list[ProviderEvent]:
        if not isinstance(chunk, dict):
            raise ProviderUnavailable(f"a stream chunk is not a JSON object: {chunk!r:.200}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = Usage(
                int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            )
        events: list[ProviderEvent] = []
        for choice in _list(chunk.get("choices"), "choices"):
            if choice.get("index", 0) != 0:
                continue  # n > 1 is not supported: only the first answer counts
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise ProviderUnavailable(f"a chunk's delta is not an object: {delta!r:.200}")
            text = delta.get("content") or delta.get("refusal")
            if text:
                events.append(TextDelta(str(text)))
            for piece in _list(delta.get("tool_calls"), "tool_calls"):
                function = piece.get("function") or {}
                events.extend(
                    self._calls.add(
                        piece.get("index"),
                        piece.get("id"),
                        function.get("name"),
                        function.get("arguments") or "",
                    )
                )
            finish = choice.get("finish_reason")
            if finish is not None:
                self.finish = str(finish)
                events.extend(self._calls.finish())
        return events


def _list(value: object, what: str) -> list[dict[str, Any]]:
    """Return a chunk's list of objects (`choices`, `tool_calls`); None is empty."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ProviderUnavailable(f"a chunk's {what} is not a list of objects: {value!r:.200}")
    return value


@dataclass(slots=True)
class _Partial:
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class _ToolCalls:
    """Assemble streamed tool-call deltas; a call is complete when the next one starts.

    That is the SDK's own rule (openai/lib/streaming/chat/_completions.py): OpenAI and vLLM send
    calls one after the other. A server that went back to a finished call would break it.
    """

    __slots__ = ("_calls", "_current", "_done")

    def __init__(self) -> None:
        self._calls: dict[int, _Partial] = {}
        self._current: int | None = None
        self._done: set[int] = set()

    def add(
        self, index: int | None, call_id: str | None, name: str | None, arguments: str
    ) -> list[ProviderEvent]:
        events: list[ProviderEvent] = []
        if index is None:  # some servers omit it: a new id starts a new call
            if call_id is not None or self._current is None:
                index = len(self._calls)
            else:
                index = self._current
        if index in self._done:
            raise ProviderUnavailable(f"tool call {index} got more text after it was complete")
        if self._current is not None and index != self._current:
            events.append(self._complete(self._current))
        self._current = index
        partial = self._calls.setdefault(index, _Partial())
        partial.id = call_id or partial.id
        partial.name = name or partial.name
        partial.arguments += arguments
        events.append(ToolCallDelta(index, call_id, name, arguments))
        return events

    def finish(self) -> list[ProviderEvent]:
        return [self._complete(i) for i in sorted(self._calls) if i not in self._done]

    def _complete(self, index: int) -> ToolCallDone:
        self._done.add(index)
        partial = self._calls[index]
        call_id = partial.id or f"call_{uuid.uuid4().hex[:24]}"
        return ToolCallDone(ToolCall(call_id, partial.name or "", partial.arguments or "{}"))


def _map_error(where: str, exc: Exception) -> ProviderError:
    """Map an SDK exception to corral's: the one boundary between the two."""
    if isinstance(exc, openai.APIStatusError):
        headers = exc.response.headers
        return status_error(where, exc.status_code, exc.message, retry_after_from(headers))
    if isinstance(exc, openai.APIConnectionError) and (lost := failed_connection(exc)):
        return ProviderUnavailable(f"{where}: connection failed: {type(lost).__name__}: {lost}")
    if isinstance(exc, openai.APITimeoutError):
        return ProviderUnavailable(f"{where} timed out: {exc}")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return ProviderUnavailable(f"{where}: connection failed: {type(cause).__name__}: {cause}")
    if isinstance(exc, openai.APIError):  # an error event inside a 200 stream
        return type_error(where, exc.type, exc.message)
    if isinstance(exc, httpx2.HTTPError):
        return ProviderUnavailable(f"{where}: {type(exc).__name__}: {exc}")
    if isinstance(exc, json.JSONDecodeError):
        return ProviderUnavailable(f"{where} sent a malformed chunk: {exc}")
    # The SDK's other errors (credentials, configuration) will not go away by trying again.
    return ProviderRejected(f"{where}: {type(exc).__name__}: {exc}")
