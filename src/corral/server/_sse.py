"""Server-sent events: a request's event log as ``text/event-stream``, resumable by event id.

Each event is one frame::

    id: 7                      the event's seq: a reconnecting client sends it as Last-Event-ID
    event: tool_call_finished  the event's kind
    data: {"type": ..., "seq": 7, "request_id": ..., ...}

The stream reads the request's append-only log with its own cursor, so a slow client loses
nothing and slows nobody; it starts after `Last-Event-ID` (or `?after=`), and ends after the
terminal event (`done`, `error` or `cancelled`). While nothing happens a comment (``: ping``)
goes out every `ping_s`, so proxies keep the connection and a gone client is noticed.

Disconnects: the response listens for ``http.disconnect`` beside the stream, whatever the ASGI
server's version, so a client that leaves is seen at once. Leaving does not cancel the request (it
can resume) unless the client asked for that (`cancel_on_disconnect`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from corral._json import dumps
from corral.agent import Event, EventReader, TerminalEvent

__all__ = ["EventStream", "encode_frame", "frame", "last_event_id"]

logger = logging.getLogger(__name__)

_RETRY_MS = 1000
"""Sent first: how long an EventSource waits before reconnecting."""
_HEAD_WAIT_S = 0.05
"""How long the response's head waits for the first event, to go out in the same write."""


def frame(event: Event) -> bytes:
    """Return the SSE frame of one event (JSON data on one line)."""
    return encode_frame(event.seq, event.kind, event.to_dict())


def encode_frame(seq: int, kind: str, data: object) -> bytes:
    """Return an SSE frame: `id` the seq, `event` the kind, `data` the JSON of `data`."""
    return b"id: %d\nevent: %b\ndata: %b\n\n" % (seq, kind.encode(), dumps(data))


def last_event_id(header: str | None, after: int | None) -> int:
    """Return the seq to resume after: `?after=`, else the Last-Event-ID header, else 0."""
    if after is not None:
        return max(0, after)
    if header is None or not header.strip():
        return 0
    try:
        return max(0, int(header.strip()))
    except ValueError:
        return 0  # not one of ours: start from the beginning


class EventStream(Response):
    """A streaming response of a request's events, from `events` (already resumed).

    Args:
        events: The events to send; the stream ends after a terminal one.
        ping_s: Seconds of silence before a keep-alive comment.
        on_disconnect: Called if the client left before the terminal event was sent.
        headers: Extra response headers (X-Request-Id, Location).
        counter: Entered for the life of the stream (counts open streams).
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        events: EventReader,
        *,
        ping_s: float,
        on_disconnect: Callable[[], None] | None = None,
        headers: Mapping[str, str] | None = None,
        counter: contextlib.AbstractContextManager[None] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        self._events = events
        self._ping_s = ping_s
        self._on_disconnect = on_disconnect
        self._counter = counter or contextlib.nullcontext()
        self._finished = False
        self.status_code = 200
        self.background = background
        self.init_headers(
            {
                "cache-control": "no-cache",
                "x-accel-buffering": "no",  # nginx: do not buffer the stream
                **(headers or {}),
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream until the terminal event, or until the client disconnects."""
        with self._counter:
            # The stream runs in this task (its first event goes out without waiting for the
            # loop to start another); a listener task cancels it if the client goes away.
            streamer = asyncio.current_task()
            assert streamer is not None
            left = False  # set with our own cancel of this task, in the same step
            streaming = True

            async def listen() -> None:
                nonlocal left
                await _disconnected(receive)
                if streaming:
                    left = True
                    streamer.cancel()

            def ours() -> bool:
                # Our cancel, and nobody else's: swallow it, and leave the task uncancelled.
                if left and streamer.cancelling() == 1:
                    streamer.uncancel()
                    return True
                return False

            listener = asyncio.create_task(listen(), name="corral-sse-listen")
            try:
                await self._stream(send)
            except asyncio.CancelledError:
                if not ours():
                    raise
            except OSError:
                pass  # the connection broke: as if the client left
            finally:
                streaming = False
                # The listener is ours and ends here, whichever way this goes. Its cancel of
                # this task may still be pending (it ran just as the stream ended): it lands
                # on this await, and is ours to swallow.
                listener.cancel()
                try:
                    await asyncio.gather(listener, return_exceptions=True)
                except asyncio.CancelledError:
                    if not ours():
                        raise
        if not self._finished and self._on_disconnect is not None:
            self._on_disconnect()
        if self.background is not None:
            await self.background()

    async def _stream(self, send: Send) -> None:
        # The head waits a moment for the first event, which is often a loop turn away (the
        # request's task logs it), so that the two go out in one write (`_http`); a stream
        # with nothing to say yet gets its head alone after `_HEAD_WAIT_S`.
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        started = False
        # The reconnection delay goes out with the first frames, in their write.
        prefix = f"retry: {_RETRY_MS}\n\n".encode()
        events = self._events
        while True:
            wait = self._ping_s if started else min(self._ping_s, _HEAD_WAIT_S)
            try:
                event = await events.next_within(wait)
            except StopAsyncIteration:
                if not started:
                    await send(start)
                if prefix:
                    await _body(send, prefix)
                break
            if not started:
                started = True
                await send(start)
                if event is None and wait < self._ping_s:
                    continue  # no first event yet: the head alone, then wait as usual
            if event is None:  # quiet for ping_s
                await _body(send, prefix + b": ping\n\n")
                prefix = b""
                continue
            batch = [event]
            if not isinstance(event, TerminalEvent):
                # Whatever else is in the log already goes out in the same write.
                batch += events.take_ready()
            data = prefix + b"".join(map(frame, batch))
            prefix = b""
            if isinstance(batch[-1], TerminalEvent):
                # The terminal event ends the body, in the same message.
                self._finished = True
                await send({"type": "http.response.body", "body": data, "more_body": False})
                return
            await _body(send, data)
        self._finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _body(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
