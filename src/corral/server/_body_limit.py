"""The request body's size limit: 413, as JSON naming the limit, before the app reads too much.

Written here rather than taken from FastAPI's `max_body_size` (Starlette's body-limit
middleware): that one wraps each request twice, at the app and at its route, and every message
sent back through both, each frame of an SSE stream included; and over a declared
`Content-Length` it answers in plain text, unlike the rest of the API. Here a declared length is
checked once, before the app runs: the HTTP server reads no more than it declares, so nothing
else is needed. Only a chunked body is counted as the app reads it, and one over the limit ends
the read with an HTTP 413 error, which the app's handlers answer.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit"]


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return (
            f"the request body is over the limit of {self.max_bytes} bytes (CORRAL_MAX_BODY_BYTES)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the declared length, or count a chunked body, then run the app."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = True
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                too_large = False  # the HTTP server refuses a malformed length itself
            if too_large:
                response = JSONResponse({"detail": self._message()}, status_code=413)
                await response(scope, receive, send)
                return
        if chunked:
            receive = self._counted(receive)
        await self.app(scope, receive, send)

    def _counted(self, receive: Receive) -> Receive:
        read = 0

        async def counted() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.max_bytes:
                    raise HTTPException(413, self._message())
            return message

        return counted
