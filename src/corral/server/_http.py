"""The HTTP protocol `corral serve` gives uvicorn: uvicorn's own, with its writes coalesced.

uvicorn writes a response's status line and headers when the app sends `http.response.start`,
and each body part when it is sent: a JSON answer is two socket writes, and an SSE stream's
headers go out alone, just before its first frames. Each write is a system call and a wake-up of
the peer. The transport below holds what is written during one turn of the event loop and writes
it at the end of that turn, in one call: an answer's headers and body go out together, as do a
stream's headers and first frames, or its last frame and the end of its body. Nothing waits for
longer than the turn of the loop it was written in.

A large write is not held: once 64 KiB are pending they go out at once, so the transport's own
flow control (pausing the writer past its high-water mark) works as it did.

uvicorn has no setting for this, so it is done where uvicorn lets an application choose: the
protocol class (`uvicorn.Config(http=...)`), whose transport is wrapped when a connection opens.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

__all__ = ["FLUSH_AT_BYTES", "CoalescingHTTPProtocol", "CoalescingTransport"]

FLUSH_AT_BYTES = 64 * 1024


class CoalescingTransport:
    """A transport that writes what one turn of the loop wrote, in one write, at its end.

    Everything but writing is the wrapped transport's own (reading, extra info, closing after a
    flush); it stands in for an `asyncio.Transport` wherever uvicorn hands one on.
    """

    __slots__ = ("_loop", "_pending", "_scheduled", "_size", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold `data` until the end of this turn of the loop (or send it now, if large)."""
        if not data:
            return
        self._pending.append(bytes(data))
        self._size += len(data)
        if self._size >= FLUSH_AT_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_scheduled)

    def writelines(self, lines: Any) -> None:
        """Write each of `lines` (held as `write` holds them)."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Write what is held now, in one write; drop it if the connection is gone."""
        if not self._pending:
            return
        pending, self._pending, self._size = self._pending, [], 0
        if self._transport.is_closing():
            return  # the peer is gone: uvicorn's own transport would drop it too
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def _flush_scheduled(self) -> None:
        self._scheduled = False
        self.flush()

    def get_write_buffer_size(self) -> int:
        """Bytes not yet sent: held here, and buffered by the wrapped transport."""
        return self._size + self._transport.get_write_buffer_size()

    def write_eof(self) -> None:
        """Flush, then close the write side."""
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        """Flush, then close: what was written before closing still goes out."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        """Drop what is held and abort the connection."""
        self._pending, self._size = [], 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol (httptools where installed, else h11) on a coalescing transport."""

    def connection_made(self, transport: Any) -> None:
        """Wrap the connection's transport, then start as uvicorn does."""
        super().connection_made(CoalescingTransport(transport, asyncio.get_running_loop()))
