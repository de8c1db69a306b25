"""Admission: requests beyond the server's or a tenant's limit get 429 before anything starts."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from corral.providers.scripted import ScriptedProvider
from corral.server import ServerSettings
from tests.server.conftest import MakeSettings, started
from tests.server.helpers import HeldModel, parse_sse

SSE = {"accept": "text/event-stream"}


async def send(client: httpx.AsyncClient, sid: str, text: str) -> httpx.Response:
    return await client.post(f"/sessions/{sid}/messages", json={"message": text})


async def finish(client: httpx.AsyncClient, request_id: str) -> None:
    events = parse_sse((await client.get(f"/requests/{request_id}/events", headers=SSE)).text)
    assert events[-1]["event"] == "done"


async def metric(client: httpx.AsyncClient, line_start: str) -> float:
    text = (await client.get("/metrics")).text
    return float(next(ln for ln in text.splitlines() if ln.startswith(line_start)).split()[-1])


async def test_the_server_limit_answers_429_and_starts_nothing(make_settings: MakeSettings) -> None:
    model = HeldModel()
    settings = make_settings(max_requests=2)
    async with started(settings, provider=ScriptedProvider(script=model)) as running:
        async with running.client() as acme, running.client("globex") as globex:
            sid = (await acme.post("/sessions", json={})).json()["id"]
            other = (await globex.post("/sessions", json={})).json()["id"]
            first, second = [(await send(acme, sid, t)).json()["id"] for t in ("a", "b")]
            await model.gate.wait_for(2)
            refused = await send(globex, other, "c")  # the limit is the server's: any tenant
            assert refused.status_code == 429
            assert "max_requests = 2" in refused.json()["detail"]
            assert int(refused.headers["retry-after"]) >= 1
            assert await metric(acme, "corral_requests_in_flight ") == 2
            assert await metric(acme, 'corral_requests_refused_total{limit="server"}') == 1
            # Nothing of the refused request exists: no model call, no stored request.
            assert model.gate.arrived == 2
            session = (await globex.get(f"/sessions/{other}")).json()
            assert session["active_requests"] == []
            model.gate.open()
            for request_id in (first, second):
                await finish(acme, request_id)
            admitted = await send(globex, other, "quick again")
            assert admitted.status_code == 202
            await finish(globex, admitted.json()["id"])
    assert running.runtime.statistics().requests_in_flight == 0


async def test_one_tenant_at_its_limit_leaves_room_for_the_others(
    make_settings: MakeSettings,
) -> None:
    model = HeldModel()
    settings = make_settings(max_requests_per_tenant=3)
    async with started(settings, provider=ScriptedProvider(script=model)) as running:
        async with running.client() as acme, running.client("globex") as globex:
            sid = (await acme.post("/sessions", json={})).json()["id"]
            other = (await globex.post("/sessions", json={})).json()["id"]
            # Acme fills its share at once, from concurrent posts: exactly 3 pass.
            answers = await asyncio.gather(*(send(acme, sid, f"m{i}") for i in range(8)))
            assert sorted(r.status_code for r in answers) == [202] * 3 + [429] * 5
            refused = next(r for r in answers if r.status_code == 429)
            assert "max_requests_per_tenant = 3" in refused.json()["detail"]
            # Globex is not held back by acme's backlog.
            theirs = await send(globex, other, "quick hello")
            assert theirs.status_code == 202
            await finish(globex, theirs.json()["id"])
            stats = running.runtime.statistics()
            assert stats.requests_refused == {"tenant": 5}
            # Acme gets a place again as soon as one of its requests ends.
            await model.gate.wait_for(3)
            cancelled = next(r.json()["id"] for r in answers if r.status_code == 202)
            assert (await acme.delete(f"/requests/{cancelled}")).json() == {"cancelled": 1}
            await acme.get(f"/requests/{cancelled}/events", headers=SSE)
            again = await send(acme, sid, "quick next")
            assert again.status_code == 202
            model.gate.open()
            for r in [*answers, again]:
                if r.status_code == 202 and r.json()["id"] != cancelled:
                    await finish(acme, r.json()["id"])
    assert running.runtime.statistics().requests_in_flight == 0


def test_the_default_limit_is_what_the_request_manager_holds() -> None:
    settings = ServerSettings(max_queue=50, max_concurrent_requests=7)
    assert settings.request_limit == 57
    assert ServerSettings(max_requests=5).request_limit == 5
    with pytest.raises(ValueError, match="max_requests_per_tenant"):
        ServerSettings(max_requests_per_tenant=0)
