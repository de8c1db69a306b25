"""The floor of `corral bench server`: a bare relay that does a run's I/O and nothing else.

    python -m corral.cli.bench_server._floor --port 8001 --model-url http://127.0.0.1:9000

It answers the bench client as `corral serve` does (`POST /sessions`, then `POST
/sessions/{id}/messages` streamed as SSE with the same events, the answer checked the same way)
over the same stack below the application: uvicorn with httptools on uvloop and corral's
head-joining protocol, and corral's own model transport (`WireClient`, aiohttp) and SSE decoder.
Between the two there is no framework, no database, no API key, no agent, scheduler or request
manager: one raw ASGI function per route, the two tools run inline (20 ms each, at once). Model
calls take one of as many slots as `corral serve` has provider streams by default, so that with
many clients the relay queues for the model as corral does.

So its CPU per run is what the I/O of a run costs on this machine at each client count: what
any server written on these libraries pays before doing anything of its own. `corral bench
server --floor` measures it in corral's place.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

from corral._json import dumps, loads
from corral.cli.bench_server import _tools
from corral.providers._wire import WireClient
from corral.providers.base import ToolSpec
from corral.providers.openai import to_openai_tools
from corral.server._http import CoalescingHTTPProtocol
from corral.server._sse import encode_frame
from corral.server.settings import ServerSettings

__all__ = ["FloorApp", "main"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# The bench agent's own tools: declared as corral's OpenAI provider declares them (so the model's
# request is as large), and called as plain coroutines, with no registry or scheduler between.
_TOOLS = to_openai_tools(tuple(ToolSpec.of(tool) for tool in _tools.registry))
_TOOL_FUNCTIONS: dict[str, Callable[[int, int], Awaitable[int]]] = {
    "add": _tools.add,
    "multiply": _tools.multiply,
}


class FloorApp:
    """The relay's ASGI application (one instance per process)."""

    def __init__(self, model_url: str) -> None:
        self._model = WireClient(
            f"{model_url.rstrip('/')}/v1/chat/completions",
            {"authorization": "Bearer sk-floor", "content-type": "application/json"},
            timeout_s=60.0,
        )
        self._ids = itertools.count(1)
        self._streams = asyncio.Semaphore(
            ServerSettings.model_fields["max_concurrent_llm_streams"].default
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route: lifespan, `GET /readyz`, `POST /sessions`, `POST /sessions/{id}/messages`."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/readyz":
            await _json(send, 200, {"ready": True})
        elif method == "POST" and path == "/sessions":
            await _body(receive)
            await _json(send, 201, {"id": f"ses_{next(self._ids)}"})
        elif method == "POST" and path.startswith("/sessions/") and path.endswith("/messages"):
            message = str(loads(await _body(receive))["message"])
            await self._run(message, send)
        else:
            await _json(send, 404, {"detail": "not found"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        """Close the model transport's connection pool."""
        await self._model.aclose()

    async def _run(self, message: str, send: Send) -> None:
        """Stream one run: model, both tools at once, model again; the events corral sends."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        seq = itertools.count(1)

        async def event(kind: str, data: dict[str, Any], *, last: bool = False) -> None:
            body = encode_frame(next(seq), kind, data)
            await send({"type": "http.response.body", "body": body, "more_body": not last})

        await event("started", {"type": "started"})
        messages: list[dict[str, Any]] = [{"role": "user", "content": message}]
        calls: dict[int, dict[str, Any]] = {}
        async with self._streams:
            async for chunk in self._model.stream(self._request(messages), "the fake model"):
                for delta_call in chunk["choices"][0]["delta"].get("tool_calls") or ():
                    calls[delta_call["index"]] = delta_call
        for call in calls.values():
            await event("tool_call_started", {"type": "tool_call_started", "call": call})
        results = await asyncio.gather(*(_tool(call) for call in calls.values()))
        messages.append({"role": "assistant", "content": None, "tool_calls": list(calls.values())})
        for call, result in zip(calls.values(), results, strict=True):
            await event(
                "tool_call_finished",
                {"type": "tool_call_finished", "id": call["id"], "status": "ok", "value": result},
            )
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": str(result)})
        await event("step_finished", {"type": "step_finished", "step": 1})
        text = []
        async with self._streams:
            async for chunk in self._model.stream(self._request(messages), "the fake model"):
                choices = chunk.get("choices") or ()
                piece = choices[0]["delta"].get("content") if choices else None
                if piece:
                    text.append(piece)
                    await event("text", {"type": "text", "text": piece})
        await event("step_finished", {"type": "step_finished", "step": 2})
        await event("done", {"type": "done", "result": {"text": "".join(text)}}, last=True)

    @staticmethod
    def _request(messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "model": "bench-model",
            "messages": messages,
            "tools": _TOOLS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }


async def _tool(call: dict[str, Any]) -> int:
    function = call["function"]
    args = loads(function["arguments"])
    return await _TOOL_FUNCTIONS[function["name"]](int(args["a"]), int(args["b"]))


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _json(send: Send, status: int, data: dict[str, Any]) -> None:
    body = dumps(data)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    """Serve the relay on 127.0.0.1 until terminated, on uvloop as `corral serve` runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-url", required=True)
    args = parser.parse_args()
    config = uvicorn.Config(
        FloorApp(args.model_url),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        lifespan="on",
        http=CoalescingHTTPProtocol,
        loop="auto",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
