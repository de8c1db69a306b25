"""Running the app under uvicorn, with a shutdown that drains before connections close.

uvicorn's own shutdown stops listening, then waits for open connections, and only then runs the
lifespan's shutdown. An SSE stream is an open connection until its request ends, so draining in
the lifespan would come too late: the streams would be cut (after `timeout_graceful_shutdown`)
before their requests got a final event. `CorralServer.shutdown` drains first, while the streams
are open: new requests get 503, running ones finish within the grace period, the rest are
cancelled and every stream ends with its final event; then uvicorn closes the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable

import uvicorn

from corral.providers import Provider
from corral.server._http import CoalescingHTTPProtocol
from corral.server._runtime import Runtime
from corral.server.app import create_app
from corral.server.config import ServerConfig
from corral.server.settings import ServerSettings

__all__ = ["CorralServer", "serve"]


class CorralServer(uvicorn.Server):
    """uvicorn's server, draining the runtime first when it shuts down."""

    def __init__(
        self,
        config: uvicorn.Config,
        runtime: Runtime,
        *,
        on_started: Callable[[CorralServer], None] | None = None,
    ) -> None:
        self._should_exit = False
        self._wake: Callable[[], object] | None = None
        super().__init__(config)
        self.runtime = runtime
        self._on_started = on_started

    @property
    def should_exit(self) -> bool:
        """Whether the server was asked to stop; setting it wakes the main loop at once."""
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        if value and self._wake is not None:
            self._wake()  # thread-safe: signal handlers and other threads set it too

    TICK_S = 1.0
    """How often the main loop wakes: uvicorn's date header has a resolution of one second."""

    async def main_loop(self) -> None:
        """Tick once a second, on the second, and stop as soon as `should_exit` is set.

        uvicorn's own loop wakes every 100 ms to look at `should_exit`: ten wake-ups a second
        of an idle server, each costing a cold burst of CPU. Here an exit order wakes it.
        """
        loop = asyncio.get_running_loop()
        ordered = asyncio.Event()
        self._wake = lambda: loop.call_soon_threadsafe(ordered.set)
        try:
            counter = 0  # a multiple of 10: every tick refreshes the date header
            while not await self.on_tick(counter):
                counter = (counter + 10) % 864000
                wait_s = self.TICK_S - time.time() % self.TICK_S
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await ordered.wait()
        finally:
            self._wake = None

    @property
    def url(self) -> str:
        """The base URL the server listens on (the real port when 0 was asked for)."""
        host, port = self.config.host, self.config.port
        for server in self.servers:
            for sock in server.sockets:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    port = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does, then report (the CLI prints its banner there)."""
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started(self)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Drain the runtime while connections are open, then shut down as uvicorn does."""
        await self.runtime.drain()
        await super().shutdown(sockets)


async def serve(
    settings: ServerSettings,
    config: ServerConfig,
    *,
    provider: Provider | None = None,
    on_started: Callable[[CorralServer], None] | None = None,
    install_signal_handlers: bool = True,
) -> None:
    """Start the runtime, serve the API until asked to stop (SIGINT/SIGTERM), drain, close.

    The runtime starts before the port is bound, so a bad config or an unreachable database
    fails before anything is served.

    Raises:
        ConfigError, UsageError, StateError: start-up failed; nothing is left running.
    """
    runtime = Runtime(settings, config, provider=provider)
    await runtime.start()
    try:
        app = create_app(settings, config=config, runtime=runtime)
        uv_config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            lifespan="on",
            # After the drain, connections still open (idle keep-alives, stuck clients) get
            # this long before uvicorn cancels them.
            timeout_graceful_shutdown=5,
            http=CoalescingHTTPProtocol,
        )
        server = CorralServer(uv_config, runtime, on_started=on_started)
        if not install_signal_handlers:
            server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        await server.serve()
    finally:
        await runtime.aclose()
