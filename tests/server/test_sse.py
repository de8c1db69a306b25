"""The SSE response itself: frames, batching of events already logged, the end of the stream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from typing import Any

import pytest

from corral.agent import Cancelled, EventLog, Started, TextChunk
from corral.server._sse import EventStream
from tests.server.helpers import parse_sse


class _Peer:
    """The ASGI side of a client: records what it is sent, and leaves once the body has ended.

    With a `log`, each message is recorded with the number of events logged when it came.
    """

    def __init__(self, log: EventLog | None = None) -> None:
        self.sent: list[tuple[str, bytes, int]] = []
        self._log = log
        self._ended = asyncio.Event()
        self._changed = asyncio.Event()

    @property
    def bodies(self) -> list[bytes]:
        return [body for kind, body, _ in self.sent if kind == "http.response.body"]

    async def send(self, message: MutableMapping[str, Any]) -> None:
        logged = len(self._log) if self._log is not None else 0
        self.sent.append((message["type"], message.get("body", b""), logged))
        if message["type"] == "http.response.body" and not message["more_body"]:
            self._ended.set()
        self._changed.set()

    async def receive(self) -> dict[str, Any]:
        await self._ended.wait()
        return {"type": "http.disconnect"}

    async def until(self, seen: Callable[[_Peer], bool]) -> None:
        """Wait until `seen(self)` holds (checked after each message)."""
        while not seen(self):
            self._changed.clear()
            await self._changed.wait()

    def stream(self, response: EventStream) -> asyncio.Future[None]:
        return asyncio.ensure_future(response({"type": "http"}, self.receive, self.send))


async def _run(log: EventLog, *, after: int = 0) -> list[bytes]:
    peer = _Peer()
    await EventStream(log.read(after=after), ping_s=30)({"type": "http"}, peer.receive, peer.send)
    return peer.bodies


async def test_events_already_logged_go_out_in_one_write() -> None:
    log = EventLog()
    log.append(Started(log.next_seq, "r1", history_len=0))
    for text in ("a", "b", "c"):
        log.append(TextChunk(log.next_seq, "r1", step=1, text=text))
    streaming = asyncio.ensure_future(_run(log))
    await asyncio.sleep(0.05)
    # Two live ones, logged together: a write of their own.
    log.append(TextChunk(log.next_seq, "r1", step=1, text="d"))
    log.append(Cancelled(log.next_seq, "r1", reason="test", started=True))
    bodies = await streaming
    first, *rest = bodies
    # The reconnection delay rides in the first write, with the events already logged.
    assert first.startswith(b"retry: 1000\n\nid: 1\n")
    assert [e["id"] for e in parse_sse(first.decode())] == [1, 2, 3, 4]
    events = parse_sse(b"".join(rest).decode())
    assert [(e["id"], e["event"]) for e in events] == [(5, "text"), (6, "cancelled")]
    # The terminal event ends the body in the same message: one write, not two.
    assert len(rest) == 1


async def test_resuming_skips_what_the_client_has() -> None:
    log = EventLog()
    log.append(Started(log.next_seq, "r1", history_len=0))
    log.append(TextChunk(log.next_seq, "r1", step=1, text="a"))
    log.append(Cancelled(log.next_seq, "r1", reason="test", started=True))
    bodies = await _run(log, after=2)
    assert [e["id"] for e in parse_sse(b"".join(bodies).decode())] == [3]


async def test_a_client_leaving_ends_the_stream_quietly() -> None:
    log = EventLog()
    log.append(Started(log.next_seq, "r1", history_len=0))
    left, gone = asyncio.Event(), []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and b"id: 1\n" in message["body"]:
            left.set()  # the client reads the first event, then hangs up

    async def receive() -> dict[str, Any]:
        await left.wait()
        return {"type": "http.disconnect"}

    response = EventStream(log.read(), ping_s=30, on_disconnect=lambda: gone.append(True))
    await response({"type": "http"}, receive, send)  # returns: not cancelled, nothing raised
    assert gone == [True]
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_a_cancel_from_outside_still_cancels() -> None:
    log = EventLog()

    async def send(message: MutableMapping[str, Any]) -> None:
        pass

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    response = EventStream(log.read(), ping_s=30)
    task = asyncio.ensure_future(response({"type": "http"}, receive, send))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_quiet_stream_is_pinged_and_then_goes_on() -> None:
    log = EventLog()
    log.append(Started(log.next_seq, "r1", history_len=0))
    peer = _Peer()
    streaming = peer.stream(EventStream(log.read(), ping_s=0.01))
    await asyncio.wait_for(peer.until(lambda p: any(b": ping" in b for b in p.bodies)), 5)
    log.append(Cancelled(log.next_seq, "r1", reason="test", started=True))
    await asyncio.wait_for(streaming, 5)
    bodies = peer.bodies
    events = parse_sse(b"".join(bodies).decode())
    assert [e["id"] for e in events] == [1, 2]
    assert bodies[0].startswith(b"retry: 1000\n\nid: 1\n")


async def test_a_reader_takes_what_is_there_or_waits_with_a_time_limit() -> None:
    log = EventLog()
    reader = log.read()
    assert await reader.next_within(0.01) is None  # nothing yet
    log.append(Started(log.next_seq, "r1", history_len=0))
    log.append(TextChunk(log.next_seq, "r1", step=1, text="a"))
    first = await reader.next_within(5)
    assert first is not None
    assert first.seq == 1
    assert [e.seq for e in reader.take_ready()] == [2]
    assert reader.take_ready() == []
    later = asyncio.ensure_future(reader.next_within(5))
    await asyncio.sleep(0)
    log.append(Cancelled(log.next_seq, "r1", reason="test", started=True))
    assert (await later).seq == 3  # type: ignore[union-attr]
    with pytest.raises(StopAsyncIteration):
        await reader.next_within(5)  # closed, and every event read


async def test_the_head_waits_for_the_first_event_to_go_out_with_it() -> None:
    log = EventLog()
    peer = _Peer(log)
    # The first event is logged a loop turn after the response starts, as a request's task does.
    loop = asyncio.get_running_loop()
    loop.call_soon(lambda: log.append(Started(log.next_seq, "r1", history_len=0)))
    loop.call_later(
        0.01, lambda: log.append(Cancelled(log.next_seq, "r1", reason="t", started=True))
    )
    # Awaited here, not in a task of its own: the response starts before the event is logged.
    await EventStream(log.read(), ping_s=30)({"type": "http"}, peer.receive, peer.send)
    # No head went out before there was an event to send with it, and the first body follows it.
    (head, _, logged_at_head), (body, _, logged_at_body) = peer.sent[:2]
    assert (head, logged_at_head) == ("http.response.start", 1)
    assert (body, logged_at_body) == ("http.response.body", 1)


async def test_a_stream_with_nothing_to_say_gets_its_head_at_once_all_the_same() -> None:
    log = EventLog()
    peer = _Peer()
    streaming = peer.stream(EventStream(log.read(), ping_s=30))
    # Well before the first ping (30 s): the head alone, no body yet.
    await asyncio.wait_for(peer.until(lambda p: bool(p.sent)), 5)
    assert [kind for kind, _, _ in peer.sent] == ["http.response.start"]
    log.append(Cancelled(log.next_seq, "r1", reason="test", started=False))
    await asyncio.wait_for(streaming, 5)
    bodies = peer.bodies
    assert [e["id"] for e in parse_sse(b"".join(bodies).decode())] == [1]
    assert bodies[0].startswith(b"retry: 1000\n\nid: 1\n")
