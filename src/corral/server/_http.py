"""The HTTP protocol `corral serve` gives uvicorn: its own, a response's head sent with its body.

uvicorn writes a response's status line and headers when the app sends `http.response.start`,
and each body part when it is sent: a JSON answer is two socket writes, and an SSE stream's
headers go out alone, just before its first frames. Each write is a system call and a wake-up of
the peer. The transport below holds a response's head until the next write, which it joins, or
until the end of the current turn of the event loop if no write comes in it: an answer's head
and body go out together, as do a stream's headers and first frames, and a head is never held
for longer than the turn it was written in. Every other write goes straight through, as before.

uvicorn has no setting for this, so it is done where uvicorn lets an application choose: the
protocol class (`uvicorn.Config(http=...)`), whose transport is wrapped when a connection opens.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

__all__ = ["CoalescingHTTPProtocol", "HeadJoiningTransport"]

_HEAD = b"HTTP/1."
"""How every response head (its status line) begins; a body never needs holding."""


class HeadJoiningTransport:
    """A transport that sends a response's head with the next write (or at the end of the turn).

    Everything but writing is the wrapped transport's own (reading, extra info, closing after a
    flush); it stands in for an `asyncio.Transport` wherever uvicorn hands one on.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write `data`, after a held head; hold it instead if it is a response's head."""
        if self._held is not None:
            data, self._held = self._held + data, None
        elif data[:7] == _HEAD:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        if data:
            self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        """Write each of `lines`."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Write a held head now; drop it if the connection is gone."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def get_write_buffer_size(self) -> int:
        """Bytes not yet sent: a held head, and what the wrapped transport buffers."""
        return len(self._held or b"") + self._transport.get_write_buffer_size()

    def write_eof(self) -> None:
        """Flush, then close the write side."""
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        """Flush, then close: what was written before closing still goes out."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        """Drop a held head and abort the connection."""
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol (httptools where installed, else h11), heads joined to bodies."""

    def connection_made(self, transport: Any) -> None:
        """Wrap the connection's transport, then start as uvicorn does."""
        super().connection_made(HeadJoiningTransport(transport, asyncio.get_running_loop()))
