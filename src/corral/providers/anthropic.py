"""Anthropic's Messages API, streamed.

Text deltas, `tool_use` blocks whose `input_json_delta`s assemble into complete calls (a call is
done at its `content_block_stop`), usage and the stop reason. The official SDK builds the client
(key, URL, version and headers); streams go over `_wire`'s direct aiohttp transport by default,
with the SDK client's headers (see `_wire` for why), or through the SDK (`transport="sdk"`, and
always for a client the caller brings). SDK errors are mapped to corral's at one boundary
(`_map_error`); the SDK's own retries are off, as `LimitedProvider` owns retries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

import anthropic
import httpx2

from corral._types import AsyncResource
from corral.errors import ProviderError, ProviderRejected, ProviderUnavailable, UsageError
from corral.executors.base import State, ensure_open
from corral.messages import Message
from corral.providers._capabilities import CapabilityTable
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

__all__ = ["AnthropicProvider", "to_anthropic_messages", "to_anthropic_tools"]

logger = logging.getLogger(__name__)

# corral's finish reasons, from Anthropic's stop reasons; others pass through as they are.
_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
}


class AnthropicProvider(AsyncResource):
    """Claude models through `AsyncAnthropic().messages.create(stream=True)`.

    Args:
        base_url: The API root; the SDK's default (ANTHROPIC_BASE_URL or api.anthropic.com).
        api_key: The key; ANTHROPIC_API_KEY when None.
        client: An `AsyncAnthropic` to use instead of making one; a copy with `max_retries=0` is
            used, and the caller keeps closing it.
        name: The provider's name in errors and rate-limit keys.
        timeout_s: Connect and read timeout of each request.
        max_tokens: The answer budget when the request sets none (the API requires one).
        capabilities: Overrides of the capability table, glob pattern to capabilities.
        transport: How streams travel: "direct" (aiohttp, with the SDK client's URL and
            headers; the default) or "sdk" (the SDK's own request path). A `client` given by
            the caller always uses "sdk".

    One instance serves any number of concurrent streams.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: anthropic.AsyncAnthropic | None = None,
        name: str = "anthropic",
        timeout_s: float = 60.0,
        max_tokens: int = 4096,
        capabilities: Mapping[str, ModelCapabilities] | None = None,
        transport: Literal["direct", "sdk"] | None = None,
    ) -> None:
        if max_tokens < 1:
            raise UsageError(f"max_tokens must be positive, got {max_tokens!r}")
        self.name = name
        self._table = CapabilityTable("anthropic", capabilities)
        self._max_tokens = max_tokens
        self._owns_client = client is None
        if client is None:
            # The SDK's aiohttp transport (its `aiohttp` extra): less CPU per streamed call than
            # its default httpx transport; see corral/providers/openai.py.
            self._client = anthropic.AsyncAnthropic(
                api_key=api_key,
                base_url=base_url,
                timeout=timeout_s,
                max_retries=0,
                http_client=anthropic.DefaultAioHttpClient(timeout=timeout_s),
            )
        else:
            if transport == "direct":
                raise UsageError(
                    f"provider {name!r}: transport 'direct' needs no client; a client given "
                    "streams through the SDK (transport='sdk')"
                )
            self._client = client.with_options(max_retries=0)
        self._wire: WireClient | None = None
        if self._owns_client and transport != "sdk":
            self._wire = wire_client(self._client, "/v1/messages", timeout_s)
        self._state = State.RUNNING

    def capabilities(self, model: str) -> ModelCapabilities:
        """Return what `model` accepts, from the overrides and the built-in table."""
        return self._table.lookup(model)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        """Stream one message: text, tool calls (each done at its block's end), usage, `Finish`.

        Raises:
            RateLimited: 429 (or a `rate_limit_error` event), with the server's Retry-After.
            ProviderUnavailable: 5xx and 529 overloaded, connection failures and timeouts.
            ProviderRejected: other 4xx.
            StreamBroken: any failure after output reached the caller.
        """
        ensure_open(self._state, f"provider {self.name!r}")
        params = self._params(request, self.capabilities(request.model))
        where = f"{self.name} model {request.model!r}"
        delivered = False
        try:
            translator = _Translator(where)
            async with aclosing(self._events(params, where)) as raws:
                async for raw in raws:
                    for event in translator.feed(raw):
                        delivered = delivered or not isinstance(event, Usage)
                        yield event
                    if translator.finished:
                        break
            for event in translator.end():
                yield event
        except (anthropic.AnthropicError, httpx2.HTTPError, json.JSONDecodeError) as exc:
            error = _map_error(where, exc)
            error.__cause__ = exc
            error = after_output(error, delivered=delivered)
            raise error from error.__cause__
        except ProviderError as exc:
            error = after_output(exc, delivered=delivered)
            if error is exc:
                raise
            raise error from exc

    async def _events(self, params: dict[str, Any], where: str) -> AsyncGenerator[Any, None]:
        """Yield the stream's events: the SDK's typed ones, or `_Fields` of the direct path."""
        if self._wire is None:
            stream = await self._client.messages.create(**params, stream=True)
            # `async with`: leaving early closes the response instead of leaving it streaming.
            async with stream:
                async for raw in stream:
                    yield raw
            return
        body = {**params, "stream": True}
        body.update(body.pop("extra_body", None) or {})
        chunks = self._wire.stream(body, where, last=_is_message_stop)
        async with aclosing(chunks):
            async for chunk in chunks:
                yield _fields(chunk)

    def _params(self, request: ModelRequest, caps: ModelCapabilities) -> dict[str, Any]:
        system, messages = to_anthropic_messages(request.messages)
        params: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "max_tokens": request.max_tokens or self._max_tokens,
        }
        if system:
            params["system"] = system
        if request.tools:
            params["tools"] = to_anthropic_tools(request.tools)
            # Anthropic's switch for parallel calls lives in tool_choice; True is its default.
            if request.parallel_tool_calls is False and caps.parallel_tool_calls:
                params["tool_choice"] = {"type": "auto", "disable_parallel_tool_use": True}
        extra: dict[str, Any] = {}
        if request.temperature is not None:
            # Not a parameter of this SDK's `create()`; the API still reads it from the body.
            extra["temperature"] = request.temperature
        extra.update(request.extra)
        if extra:
            params["extra_body"] = extra
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
        return (
            f"<AnthropicProvider {self.name!r} {self._client.base_url} state={self._state.value}>"
        )


def to_anthropic_messages(
    messages: tuple[Message, ...],
) -> tuple[str | None, list[dict[str, Any]]]:
    """Translate corral messages to Anthropic's: the system prompt, and the turns.

    - System messages are joined, in order, into the top-level system prompt.
    - Tool results become `tool_result` blocks of a user turn; consecutive results (and a user
      message right after them) share one user turn, results first, as the API requires.
    - An assistant turn is its text block, then one `tool_use` block per call.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return  # the API rejects empty turns and empty text blocks
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for message in messages:
        if message.role == "system":
            system.append(message.content)
        elif message.role == "tool":
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content,
            }
            if message.is_error:
                block["is_error"] = True
            add("user", [block])
        elif message.role == "assistant":
            blocks: list[dict[str, Any]] = []
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            blocks.extend(
                {"type": "tool_use", "id": c.id, "name": c.name, "input": _input(c)}
                for c in message.tool_calls
            )
            add("assistant", blocks)
        else:
            add("user", [{"type": "text", "text": message.content}] if message.content else [])
    return ("\n\n".join(system) if system else None), turns


def to_anthropic_tools(tools: tuple[ToolSpec, ...]) -> list[dict[str, Any]]:
    """Translate tool specs to Anthropic tools."""
    return [
        {"name": t.name, "description": t.description, "input_schema": dict(t.parameters)}
        for t in tools
    ]


def _input(call: ToolCall) -> dict[str, Any]:
    """Return a call's arguments as the object `tool_use.input` must be.

    Malformed JSON from the model is kept under "_raw_arguments" rather than dropped, so the
    history stays truthful about what the model asked for.
    """
    if not isinstance(call.arguments, str):
        return dict(call.arguments)
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        return {"_raw_arguments": call.arguments}
    return value if isinstance(value, dict) else {"_raw_arguments": call.arguments}


@dataclass(slots=True)
class _ToolBlock:
    ordinal: int
    id: str
    name: str
    arguments: str = ""


class _Translator:
    """Turn Anthropic stream events into corral events; remembers usage and the stop reason."""

    __slots__ = (
        "_blocks",
        "_calls",
        "_input_tokens",
        "_output_tokens",
        "_stop",
        "_where",
        "finished",
    )

    def __init__(self, where: str) -> None:
        self._where = where
        self._blocks: dict[int, _ToolBlock] = {}
        self._calls = 0
        self._input_tokens: int | None = None
        self._output_tokens = 0
        self._stop: str | None = None
        self.finished = False

    def feed(self, raw: Any) -> list[ProviderEvent]:
        kind = getattr(raw, "type", None)
        if kind == "message_start":
            usage = getattr(raw.message, "usage", None)
            if usage is not None:
                self._input_tokens = _input_tokens(usage)
                self._output_tokens = usage.output_tokens or 0
        elif kind == "content_block_start":
            return self._start(raw.index, raw.content_block)
        elif kind == "content_block_delta":
            return self._delta(raw.index, raw.delta)
        elif kind == "content_block_stop":
            block = self._blocks.pop(raw.index, None)
            if block is not None:
                call = ToolCall(block.id, block.name, block.arguments or "{}")
                return [ToolCallDone(call)]
        elif kind == "message_delta":
            self._stop = raw.delta.stop_reason or self._stop
            usage = raw.usage
            if usage is not None:
                # Cumulative counts: the last message_delta has the totals.
                self._output_tokens = usage.output_tokens or self._output_tokens
                if usage.input_tokens is not None:
                    self._input_tokens = _input_tokens(usage)
        elif kind == "message_stop":
            self.finished = True
        return []

    def _start(self, index: int, block: Any) -> list[ProviderEvent]:
        if block.type == "tool_use":
            tool = _ToolBlock(self._calls, block.id, block.name)
            self._calls += 1
            self._blocks[index] = tool
            return [ToolCallDelta(tool.ordinal, tool.id, tool.name, "")]
        if block.type == "text" and block.text:
            return [TextDelta(block.text)]
        return []  # thinking and server-tool blocks are not part of corral's answer

    def _delta(self, index: int, delta: Any) -> list[ProviderEvent]:
        if delta.type == "text_delta":
            return [TextDelta(delta.text)] if delta.text else []
        if delta.type == "input_json_delta":
            tool = self._blocks.get(index)
            if tool is None:
                raise ProviderUnavailable(f"{self._where}: input_json_delta for no tool_use block")
            tool.arguments += delta.partial_json
            return [ToolCallDelta(tool.ordinal, None, None, delta.partial_json)]
        return []

    def end(self) -> list[ProviderEvent]:
        if not self.finished:
            raise ProviderUnavailable(f"{self._where}: the stream ended before message_stop")
        events: list[ProviderEvent] = []
        if self._input_tokens is not None:
            events.append(Usage(self._input_tokens, self._output_tokens))
        stop = self._stop or "end_turn"
        events.append(Finish(_STOP_REASONS.get(stop, stop)))
        return events


class _Fields(dict[str, Any]):
    """A JSON object read by attribute, as the translator reads the SDK's typed events.

    A field the server left out reads as None, as the SDK's optional fields do.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)  # copy, pickle and friends probe for these
        return self.get(name)


def _fields(value: Any) -> Any:
    if isinstance(value, dict):
        return _Fields({k: _fields(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_fields(v) for v in value]
    return value


def _is_message_stop(chunk: dict[str, Any]) -> bool:
    return chunk.get("type") == "message_stop"


def _input_tokens(usage: Any) -> int:
    # Cached prompt tokens are reported apart; all of them count against the rate limit.
    return sum(
        getattr(usage, field, None) or 0
        for field in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def _map_error(where: str, exc: Exception) -> ProviderError:
    """Map an SDK exception to corral's: the one boundary between the two."""
    if isinstance(exc, anthropic.APIStatusError):
        if exc.status_code < 400:  # an `error` event inside a 200 stream
            return type_error(where, exc.type, exc.api_message or str(exc))
        detail = exc.api_message or str(exc)
        return status_error(where, exc.status_code, detail, retry_after_from(exc.response.headers))
    if isinstance(exc, anthropic.APIConnectionError) and (lost := failed_connection(exc)):
        return ProviderUnavailable(f"{where}: connection failed: {type(lost).__name__}: {lost}")
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderUnavailable(f"{where} timed out")
    if isinstance(exc, anthropic.APIConnectionError):
        cause = exc.__cause__ or exc
        return ProviderUnavailable(f"{where}: connection failed: {type(cause).__name__}: {cause}")
    if isinstance(exc, httpx2.HTTPError):  # the SDK does not wrap errors while streaming
        return ProviderUnavailable(f"{where}: {type(exc).__name__}: {exc}")
    if isinstance(exc, json.JSONDecodeError):
        return ProviderUnavailable(f"{where} sent a malformed event: {exc}")
    # The SDK's other errors (credentials, configuration) will not go away by trying again.
    return ProviderRejected(f"{where}: {type(exc).__name__}: {exc}")
