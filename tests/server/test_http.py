"""The transport under uvicorn that sends a response's head with its body: nothing lost."""

from __future__ import annotations

import asyncio
from typing import Any

from corral.providers.scripted import ScriptedProvider
from corral.server._http import CoalescingHTTPProtocol, HeadJoiningTransport
from tests.server.conftest import MakeSettings
from tests.server.test_uvicorn import serving, settings_for


class Wire:
    """The wrapped transport: records each write it is given."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.closed = False
        self.buffered = 0

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing or self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 4321)}.get(name, default)


def wrap() -> tuple[Wire, HeadJoiningTransport]:
    wire = Wire()
    return wire, HeadJoiningTransport(wire, asyncio.get_running_loop())  # type: ignore[arg-type]


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n"


async def test_a_response_head_goes_out_with_the_body_that_follows_it() -> None:
    wire, transport = wrap()
    transport.write(HEAD)
    assert wire.writes == []
    assert transport.get_write_buffer_size() == len(HEAD)
    transport.write(bytearray(b"{}"))
    assert wire.writes == [HEAD + b"{}"]  # at once, in one write
    await asyncio.sleep(0)  # the scheduled flush finds nothing held
    assert wire.writes == [HEAD + b"{}"]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 4321)  # the rest is the wire's


async def test_other_writes_go_straight_through() -> None:
    wire, transport = wrap()
    transport.writelines([b"5\r\nhello\r\n", memoryview(b"0\r\n\r\n")])
    transport.write(b"")
    assert wire.writes == [b"5\r\nhello\r\n", b"0\r\n\r\n"]


async def test_a_head_alone_goes_out_at_the_end_of_the_turn() -> None:
    wire, transport = wrap()
    transport.write(HEAD)
    await asyncio.sleep(0)
    assert wire.writes == [HEAD]
    transport.write(b"later")
    assert wire.writes == [HEAD, b"later"]


async def test_closing_sends_a_held_head_first() -> None:
    wire, transport = wrap()
    transport.write(HEAD)
    transport.close()
    assert wire.writes == [HEAD]
    assert wire.closed


async def test_a_head_held_for_a_gone_peer_is_dropped() -> None:
    wire, transport = wrap()
    transport.write(HEAD)
    wire.closing = True
    await asyncio.sleep(0)
    assert wire.writes == []
    assert transport.get_write_buffer_size() == 0


async def test_corral_serve_runs_uvicorn_on_the_coalescing_protocol(
    make_settings: MakeSettings,
) -> None:
    async with serving(settings_for(make_settings), ScriptedProvider()) as live:
        assert live.server.config.http_protocol_class is CoalescingHTTPProtocol
        async with live.http() as http:
            answers = await asyncio.gather(*(http.get("/agents") for _ in range(5)))
        assert {a.status_code for a in answers} == {200}
        assert all(a.json() == answers[0].json() for a in answers)
