"""The coalescing transport under uvicorn: one write per turn of the loop, nothing lost."""

from __future__ import annotations

import asyncio
from typing import Any

from corral.providers.scripted import ScriptedProvider
from corral.server._http import FLUSH_AT_BYTES, CoalescingHTTPProtocol, CoalescingTransport
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


def wrap() -> tuple[Wire, CoalescingTransport]:
    wire = Wire()
    return wire, CoalescingTransport(wire, asyncio.get_running_loop())  # type: ignore[arg-type]


async def test_what_one_turn_writes_goes_out_in_one_write_at_its_end() -> None:
    wire, transport = wrap()
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"")  # nothing: nothing held
    transport.write(bytearray(b"{}"))
    assert wire.writes == []
    assert transport.get_write_buffer_size() == 21
    await asyncio.sleep(0)
    assert wire.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    transport.write(b"next turn")
    await asyncio.sleep(0)
    assert wire.writes[1:] == [b"next turn"]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 4321)  # the rest is the wire's


async def test_a_large_write_is_not_held() -> None:
    wire, transport = wrap()
    transport.write(b"h")
    transport.write(b"x" * FLUSH_AT_BYTES)
    assert wire.writes == [b"h" + b"x" * FLUSH_AT_BYTES]  # at once: flow control sees it
    await asyncio.sleep(0)
    assert len(wire.writes) == 1


async def test_closing_sends_what_was_written_first() -> None:
    wire, transport = wrap()
    transport.writelines([b"last ", b"words"])
    transport.close()
    assert wire.writes == [b"last words"]
    assert wire.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing held
    assert wire.writes == [b"last words"]


async def test_what_is_written_to_a_gone_peer_is_dropped() -> None:
    wire, transport = wrap()
    transport.write(b"too late")
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
