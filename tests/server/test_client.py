"""`AsyncClient`: typed calls, errors as corral errors, retries after Retry-After, resumption."""

from __future__ import annotations

import json

import httpx
import pytest

from corral.client import APIError, AsyncClient, BusyError, ConflictError, NotFoundError
from corral.errors import NotFound, SessionBusy, VersionConflict
from tests.server.conftest import Server


class Recorder:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def scripted_transport(
    *responses: httpx.Response,
) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return httpx.MockTransport(handle), seen


async def test_retries_429_and_503_after_retry_after() -> None:
    body = {"id": "req_1", "session_id": "s", "status": "running"}
    transport, seen = scripted_transport(
        httpx.Response(503, headers={"retry-after": "2"}, json={"detail": "draining"}),
        httpx.Response(429, headers={"retry-after": "0.5"}, json={"detail": "slow down"}),
        httpx.Response(202, json=body),
    )
    sleep = Recorder()
    async with AsyncClient("http://x", api_key="k", transport=transport, sleep=sleep) as client:
        request = await client.send("s", "hi", idempotency_key="key-1")
    assert request.id == "req_1"
    assert sleep.waits == [2.0, 0.5]
    assert len(seen) == 3
    assert all(r.headers["idempotency-key"] == "key-1" for r in seen)
    assert all(r.headers["authorization"] == "Bearer k" for r in seen)


async def test_gives_up_after_max_retries() -> None:
    transport, seen = scripted_transport(
        *(httpx.Response(503, json={"detail": "no"}) for _ in range(3))
    )
    async with AsyncClient(
        "http://x", transport=transport, max_retries=2, sleep=Recorder()
    ) as client:
        with pytest.raises(APIError) as caught:
            await client.list_sessions()
    assert caught.value.status == 503
    assert len(seen) == 3


async def test_errors_are_corral_errors() -> None:
    current = {
        "scope": "agent:a",
        "key": "k",
        "kind": "json",
        "value": {"n": 2},
        "version": 2,
        "updated_at": "2026-01-01T00:00:00Z",
        "updated_by": "api",
    }
    transport, _ = scripted_transport(
        httpx.Response(404, json={"detail": "no session 'x'"}),
        httpx.Response(409, json={"detail": "busy", "running_request_id": "req_9"}),
        httpx.Response(412, json={"detail": "stale", "version": 2, "current": current}),
        httpx.Response(422, json={"detail": [], "message": "body.message: Field required"}),
    )
    async with AsyncClient("http://x", transport=transport, sleep=Recorder()) as client:
        with pytest.raises(NotFoundError) as missing:
            await client.get_session("x")
        assert isinstance(missing.value, NotFound)
        with pytest.raises(BusyError) as busy:
            await client.send("s", "hi", policy="reject")
        assert isinstance(busy.value, SessionBusy)
        assert busy.value.running_request_id == "req_9"
        with pytest.raises(ConflictError) as stale:
            await client.memory_put("agent:a", "k", 1, if_version=1)
        assert isinstance(stale.value, VersionConflict)
        assert stale.value.version == 2
        assert stale.value.document is not None
        assert stale.value.document.value == {"n": 2}
        with pytest.raises(APIError, match="body.message: Field required") as invalid:
            await client.create_session()
        assert invalid.value.status == 422


def sse(*events: tuple[int, str, dict[str, object]]) -> bytes:
    return b"".join(
        f"id: {i}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode() for i, kind, data in events
    )


async def test_events_reconnect_with_last_event_id() -> None:
    transport, seen = scripted_transport(
        httpx.Response(
            200,
            content=b"retry: 1000\n\n: ping\n\n"
            + sse((1, "started", {}), (2, "text", {"text": "a"})),
        ),
        httpx.Response(200, content=sse((3, "text", {"text": "b"}), (4, "done", {"result": {}}))),
    )
    sleep = Recorder()
    async with AsyncClient("http://x", transport=transport, sleep=sleep) as client:
        events = [e async for e in client.events("req_1")]
    assert [(e.id, e.event) for e in events] == [
        (1, "started"),
        (2, "text"),
        (3, "text"),
        (4, "done"),
    ]
    assert [r.headers["last-event-id"] for r in seen] == ["0", "2"]
    assert len(sleep.waits) == 1  # one reconnection


async def test_typed_calls_against_the_app(server: Server) -> None:
    transport = httpx.ASGITransport(app=server.app)
    async with AsyncClient(
        "http://corral.test", api_key=server.keys["acme"], transport=transport
    ) as client:
        assert [a.name for a in await client.agents()] == ["demo"]
        assert "calculate" in [t.name for t in await client.tools()]
        session = await client.create_session(metadata={"team": "blue"})
        assert session.metadata == {"team": "blue"}
        assert [s.id for s in await client.list_sessions()] == [session.id]
        request = await client.send(session.id, "calculate 3*3")
        final = await client.wait(request.id)
        assert final.status == "done"
        assert final.result is not None
        assert "9.0" in final.result["text"]
        assert [m.seq for m in await client.messages(session.id, after=2)] == [3, 4]
        assert await client.cancel_request(request.id) is False
        assert await client.cancel_session(session.id) == 0
        created = await client.memory_put("agent:a", "doc", {"n": 1}, if_version=None)
        patched = await client.memory_patch("agent:a", "doc", {"m": 2}, if_version=created.version)
        assert patched.value == {"n": 1, "m": 2}
        assert (await client.memory_increment("agent:a", "c", 3)).value == 3
        assert (await client.memory_append("agent:a", "l", "x")).value == ["x"]
        assert [r.key for r in await client.memory_list("agent:a")] == ["c", "doc", "l"]
        await client.memory_delete("agent:a", "doc", if_version=patched.version)
        assert await client.memory_get("agent:a", "doc") is None
        await client.delete_session(session.id)
        with pytest.raises(NotFoundError):
            await client.get_session(session.id)
