"""Reading server-sent events: one decoder for every SSE stream corral reads.

The OpenAI provider's direct transport reads model streams with it, and `corral.client` the
server's event streams. (The server writes its frames in `corral.server._sse`.)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEDecoder", "ServerSentEvent"]


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One event: its type ("message" unless named), its data, and its `id` line if it had one."""

    event: str
    data: str
    id: str | None = None


class SSEDecoder:
    """Split a byte stream into server-sent events, as the spec says.

    Lines end with LF, CRLF or CR; a blank line dispatches the event; `data` lines are joined
    with LF; comments (`:`), `retry` and unknown fields are skipped. Bytes are split only at line
    ends, so a multi-byte UTF-8 character cut between two network reads is decoded whole.
    """

    __slots__ = ("_buffer", "_data", "_event", "_id")

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._id: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Return the events that `chunk` completes (it may complete none, or several)."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            # A CR at the very end may be the first half of a CRLF: keep it for the next read.
            keep_cr = buffer.endswith(b"\r")
            if keep_cr:
                buffer = buffer[:-1]
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep_cr:
                buffer += b"\r"
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()
        events: list[ServerSentEvent] = []
        for raw in lines:
            if not raw:
                if self._data:
                    data = "\n".join(self._data)
                    events.append(ServerSentEvent(self._event or "message", data, self._id))
                self._event, self._id, self._data = "", None, []
                continue
            line = raw.decode("utf-8", errors="replace")
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id" and "\0" not in value:
                self._id = value
        return events

    def close(self) -> list[ServerSentEvent]:
        """Return the last event if the stream ended without its blank line."""
        tail = self.feed(b"\n\n") if self._buffer or self._data else []
        self._buffer = b""
        return tail
