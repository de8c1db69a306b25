"""A fake OpenAI-compatible model for `corral bench server`, run in its own process.

    python -m corral.cli.bench_server._model --port 9000 [--first-chunk-ms 50] [--chunk-ms 2]

`POST /v1/chat/completions` (streaming) answers a user message ``add A B, multiply C D`` with
both tool calls in one message, and, once the request carries both results, with a final text
that quotes them (``add=A+B multiply=C*D``), so the bench can check every run end to end. The
first chunk comes `first_chunk_ms` after the request, then one chunk every `chunk_ms`.

A message containing ``hold`` waits before its first chunk until ``POST /release`` (or 60 s):
the bench holds 1,000 streams open that way. ``GET /stats`` counts requests and held calls.

It runs in a process of its own so that its CPU time is not the server's, and on aiohttp's
server rather than uvicorn + Starlette because it is the cheaper of the two per chunk, which
leaves more of the machine's two cores to the server being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from typing import Any

from aiohttp import web

__all__ = ["TEXT_CHUNKS", "TOOL_CHUNKS", "main", "make_app"]

TOOL_CHUNKS = 4
"""Chunks of the tool-call message: role, one per call, finish (and usage)."""
TEXT_CHUNKS = 8
"""Chunks of the final message: the text in 7 pieces, then finish (and usage)."""
HOLD_LIMIT_S = 60.0

_ASK = re.compile(r"add (-?\d+) (-?\d+), multiply (-?\d+) (-?\d+)")


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class Model:
    """The fake's behaviour and counters."""

    def __init__(self, *, first_chunk_s: float, chunk_s: float) -> None:
        self.first_chunk_s = first_chunk_s
        self.chunk_s = chunk_s
        self.requests = 0
        self.held = 0
        self.released = asyncio.Event()
        self.n = 0

    def chunks(self, body: dict[str, Any]) -> list[bytes]:
        """Return the SSE chunks answering `body` (the last one ends with ``[DONE]``)."""
        messages = body["messages"]
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        asked = _ASK.search(str(messages[last_user]["content"]))
        results = [str(m["content"]) for m in messages[last_user + 1 :] if m["role"] == "tool"]
        self.n += 1
        head = {
            "id": f"chatcmpl-{self.n}",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": body.get("model", ""),
        }
        usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        out: list[dict[str, Any]]
        if asked is not None and not results:
            a, b, c, d = asked.groups()
            calls = [("add", a, b), ("multiply", c, d)]
            out = [chunk({"role": "assistant", "content": None})]
            for i, (name, x, y) in enumerate(calls):
                call = {
                    "index": i,
                    "id": f"call_{self.n}_{i}",
                    "type": "function",
                    "function": {"name": name, "arguments": f'{{"a": {x}, "b": {y}}}'},
                }
                out.append(chunk({"tool_calls": [call]}))
            finish = "tool_calls"
        else:
            text = f"add={results[0]} multiply={results[1]}" if len(results) == 2 else "ok"
            step = -(-len(text) // (TEXT_CHUNKS - 1))
            out = [chunk({"role": "assistant", "content": ""})]
            out[0]["choices"][0]["delta"]["content"] = text[:step]
            out += [chunk({"content": text[i : i + step]}) for i in range(step, len(text), step)]
            finish = "stop"
        last = chunk({}, finish)
        if usage_wanted:
            last["usage"] = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
        frames = [_sse(c) for c in out]
        frames.append(_sse(last) + b"data: [DONE]\n\n")
        return frames

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests += 1
        frames = self.chunks(body)
        response = web.StreamResponse(
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
        )
        await response.prepare(request)
        if any("hold" in str(m.get("content")) for m in body["messages"] if m["role"] == "user"):
            self.held += 1
            try:
                async with asyncio.timeout(HOLD_LIMIT_S):
                    await self.released.wait()
            finally:
                self.held -= 1
        await asyncio.sleep(self.first_chunk_s)
        for i, data in enumerate(frames):
            if i:
                await asyncio.sleep(self.chunk_s)
            await response.write(data)
        await response.write_eof()
        return response

    async def release(self, request: web.Request) -> web.Response:
        del request
        self.released.set()
        return web.json_response({"released": self.held})

    async def stats(self, request: web.Request) -> web.Response:
        del request
        return web.json_response({"requests": self.requests, "held": self.held})


def make_app(*, first_chunk_s: float = 0.050, chunk_s: float = 0.002) -> web.Application:
    """Return the fake's aiohttp application."""
    model = Model(first_chunk_s=first_chunk_s, chunk_s=chunk_s)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", model.completions)
    app.router.add_post("/release", model.release)
    app.router.add_get("/stats", model.stats)
    return app


def main() -> None:
    """Serve the fake model on 127.0.0.1 until terminated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first-chunk-ms", type=float, default=50.0)
    parser.add_argument("--chunk-ms", type=float, default=2.0)
    args = parser.parse_args()
    app = make_app(first_chunk_s=args.first_chunk_ms / 1000, chunk_s=args.chunk_ms / 1000)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, backlog=4096)


if __name__ == "__main__":
    main()
