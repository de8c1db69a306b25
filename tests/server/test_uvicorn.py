"""A real uvicorn on 127.0.0.1: live SSE, disconnects and resumption, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from corral.client import AsyncClient, ServerEvent
from corral.providers import Provider
from corral.providers.scripted import Reply, ScriptedProvider
from corral.server import CorralServer, ServerConfig, ServerSettings, serve
from tests.server.conftest import MakeSettings, add_tenants
from tests.server.helpers import last_user
from tests.servers import free_port
from tests.support import eventually

SSE = {"accept": "text/event-stream"}


@dataclass
class Live:
    server: CorralServer
    url: str
    keys: dict[str, str]

    def client(self, tenant: str = "acme") -> AsyncClient:
        return AsyncClient(self.url, api_key=self.keys[tenant], sleep=_no_wait)

    def http(self, tenant: str = "acme") -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"authorization": f"Bearer {self.keys[tenant]}"}
        )


async def _no_wait(_: float) -> None:
    await asyncio.sleep(0)


@asynccontextmanager
async def serving(settings: ServerSettings, provider: Provider) -> AsyncIterator[Live]:
    """Run `corral.server.serve` (what `corral serve` runs) in a task; stop it on exit."""
    ready: asyncio.Future[CorralServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            settings,
            ServerConfig.empty(),
            provider=provider,
            on_started=ready.set_result,
            install_signal_handlers=False,
        )
    )
    try:
        both: list[asyncio.Future[Any]] = [ready, task]
        await asyncio.wait(both, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises the start-up error
            raise AssertionError("the server stopped before it started")
        server = ready.result()
        yield Live(server, server.url, await add_tenants(server.runtime))
    finally:
        if ready.done():
            ready.result().should_exit = True
        async with asyncio.timeout(15):
            await task


class Switch:
    """A model that answers each user message once the test releases it ("quick..." at once)."""

    def __init__(self) -> None:
        self.arrived: asyncio.Queue[str] = asyncio.Queue()
        self.release: dict[str, asyncio.Event] = {}

    def event(self, text: str) -> asyncio.Event:
        return self.release.setdefault(text, asyncio.Event())

    async def __call__(self, request) -> Reply | str:
        text = last_user(request)
        await self.arrived.put(text)
        if not text.startswith("quick"):
            await self.event(text).wait()
        return f"echo: {text}"


def settings_for(make_settings: MakeSettings, **values: object) -> ServerSettings:
    return make_settings(port=free_port(), sse_ping_s=0.2, **values)


async def test_events_stream_live_and_resume_after_a_disconnect(
    make_settings: MakeSettings,
) -> None:
    model = Switch()
    async with serving(settings_for(make_settings), ScriptedProvider(script=model)) as live:
        async with live.http() as http, live.client() as client:
            sid = (await client.create_session()).id
            seen: list[ServerEvent] = []
            async with http.stream(
                "POST", f"/sessions/{sid}/messages", json={"message": "slow"}, headers=SSE
            ) as response:
                request_id = response.headers["x-request-id"]
                assert await model.arrived.get() == "slow"
                # The first events arrived while the model is still held: the stream is live.
                lines = response.aiter_lines()
                async for line in lines:
                    if line.startswith("id: "):
                        seen.append(ServerEvent(int(line[4:]), "", {}))
                    if len(seen) == 2:
                        break
            # The client left; the request did not stop.
            assert (await client.get_request(request_id)).status == "running"
            model.event("slow").set()
            rest = [e async for e in client.events(request_id, after=seen[-1].id)]
            assert [e.id for e in rest] == list(range(3, 3 + len(rest)))
            assert rest[-1].event == "done"
            assert rest[-1].data["result"]["text"] == "echo: slow"
            assert (await client.get_request(request_id)).status == "done"


async def test_the_client_keeps_its_connection_across_streamed_messages(
    make_settings: MakeSettings,
) -> None:
    model = Switch()
    async with serving(settings_for(make_settings), ScriptedProvider(script=model)) as live:
        transport = httpx.AsyncHTTPTransport()
        async with AsyncClient(live.url, api_key=live.keys["acme"], transport=transport) as client:
            sid = (await client.create_session()).id
            for text in ("quick one", "quick two", "quick three"):
                events = [e async for e in client.stream(sid, text)]
                assert events[-1].event == "done"
            # Each stream was read to its end, so one kept-alive connection carried all four
            # calls; a stream left half-read would have closed its connection each time.
            pool = transport._pool.connections
            assert len(pool) == 1
            assert "Request Count: 4" in pool[0].info()


async def test_cancel_on_disconnect_when_asked(make_settings: MakeSettings) -> None:
    model = Switch()
    async with serving(settings_for(make_settings), ScriptedProvider(script=model)) as live:
        async with live.http() as http, live.client() as client:
            sid = (await client.create_session()).id
            async with http.stream(
                "POST",
                f"/sessions/{sid}/messages?cancel_on_disconnect=true",
                json={"message": "slow"},
                headers=SSE,
            ) as response:
                request_id = response.headers["x-request-id"]
                await model.arrived.get()
            final = await client.wait(request_id)
            assert final.status == "cancelled"
            assert "disconnected" in (final.error or "")


async def test_client_streams_a_message_with_tools(make_settings: MakeSettings) -> None:
    async with serving(settings_for(make_settings), ScriptedProvider()) as live:
        async with live.client() as client:
            sid = (await client.create_session()).id
            events = [e async for e in client.stream(sid, "write 'hi' to x.txt, then read x.txt")]
            assert events[-1].terminal
            assert events[-1].event == "done"
            results = [e.data["result"] for e in events if e.event == "tool_call_finished"]
            assert [r["content"] for r in results] == ["2", "hi"]
            history = await client.messages(sid)
            assert [m.seq for m in history] == [1, 2, 3, 4, 5]


async def test_graceful_shutdown_finishes_or_cancels_requests_in_flight(
    make_settings: MakeSettings,
) -> None:
    model = Switch()
    settings = settings_for(make_settings, shutdown_grace_s=1.0)
    streams: dict[str, list[ServerEvent]] = {}
    async with serving(settings, ScriptedProvider(script=model)) as live:
        runtime = live.server.runtime
        async with live.client() as client:
            sid = (await client.create_session()).id

            async def follow(text: str) -> None:
                streams[text] = [e async for e in client.stream(sid, text)]

            async with asyncio.TaskGroup() as group:
                group.create_task(follow("finishes"))
                group.create_task(follow("never"))
                await model.arrived.get()
                await model.arrived.get()
                live.server.should_exit = True  # what SIGTERM does
                await eventually(lambda: not runtime.admitting, what="the drain")
                # New requests are refused while running ones get their grace period.
                async with live.http() as http:
                    refused = await http.post(f"/sessions/{sid}/messages", json={"message": "x"})
                    assert refused.status_code == 503
                    assert refused.headers["retry-after"] == "1"
                model.event("finishes").set()
    assert streams["finishes"][-1].event == "done"
    assert streams["never"][-1].event == "cancelled"
    assert "shut down" in streams["never"][-1].data["reason"]
    # The store has both ends, and the cancelled turn is in the history, marked partial.
    async with serving(settings_for(make_settings), ScriptedProvider()) as again:
        store = again.server.runtime.store
        requests = {
            (await store.get_request("acme", s[0].request_id)).status for s in streams.values()
        }
        assert requests == {"done", "cancelled"}
        history = await store.list_messages("acme", sid)
        assert [m.seq for m in history] == [1, 2, 3, 4]
        assert any(m.message.partial for m in history)


async def test_server_stops_when_nothing_runs(make_settings: MakeSettings) -> None:
    async with serving(settings_for(make_settings), ScriptedProvider()) as live:
        async with live.client() as client:
            assert await client.ready()
    with contextlib.suppress(httpx.TransportError):
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{live.url}/healthz")
            raise AssertionError(f"the server still answers: {response.status_code}")


async def test_the_server_ticks_rarely_and_stops_as_soon_as_it_is_told(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tick an hour long: the server below stops only because the exit order wakes it.
    monkeypatch.setattr(CorralServer, "TICK_S", 3600.0)
    ticks = 0
    on_tick = CorralServer.on_tick

    async def counted(self: CorralServer, counter: int) -> bool:
        nonlocal ticks
        ticks += 1
        return await on_tick(self, counter)

    monkeypatch.setattr(CorralServer, "on_tick", counted)
    async with serving(settings_for(make_settings), ScriptedProvider()) as live:
        async with live.http() as http:
            response = await http.get("/healthz")
        assert response.status_code == 200
        assert response.headers["date"].endswith(" GMT")  # set by the first tick
        assert ticks == 1
    # `serving` sets should_exit on the way out and gives the server 15 s to stop: an hour's
    # tick would fail it, had the order not woken the loop.
