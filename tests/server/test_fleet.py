"""Two servers sharing their provider limits through the real Redis (`redis_url`)."""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from corral.errors import UsageError
from corral.providers import RedisFleet
from corral.providers.scripted import ScriptedProvider
from corral.server import Runtime, load_config
from tests.fake_llm import FakeOpenAI, Reply
from tests.server.conftest import MakeSettings, started
from tests.server.helpers import HeldModel, parse_sse
from tests.support import eventually

REDIS_URL = "redis://127.0.0.1:6379/0"
SSE = {"accept": "text/event-stream"}


@pytest.fixture
async def redis_url(service_unavailable: Callable[[str, object], NoReturn]) -> str:
    try:
        fleet = await RedisFleet.connect(REDIS_URL, timeout_s=1)
    except UsageError as exc:
        service_unavailable("Redis at 127.0.0.1:6379", exc)
    await fleet.aclose()
    return REDIS_URL


async def test_a_429_seen_by_one_server_holds_back_the_other(
    tmp_path: Path, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("CORRAL_TEST_LLM_KEY", "sk-test")
    fake = FakeOpenAI(Reply(status=429, retry_after="1"), default=Reply(text="fine"))
    model = f"fleet-{uuid.uuid4().hex[:12]}"  # a key of its own in Redis
    async with fake.serve() as base_url:
        path = tmp_path / "corral.toml"
        path.write_text(
            textwrap.dedent(
                f"""
                [provider]
                provider = "openai"
                base_url = "{base_url}"
                api_key_env = "CORRAL_TEST_LLM_KEY"

                [agents.chat]
                model = "{model}"
                """
            )
        )
        config = load_config(path)
        a_settings = make_settings(redis_url=redis_url, data_dir=tmp_path / "a")
        b_settings = make_settings(redis_url=redis_url, data_dir=tmp_path / "b")
        async with started(a_settings, config=config) as a, started(b_settings, config=config) as b:
            async with a.client() as client_a, b.client() as client_b:
                sid_a = (await client_a.post("/sessions", json={})).json()["id"]
                sid_b = (await client_b.post("/sessions", json={})).json()["id"]
                first = await client_a.post(f"/sessions/{sid_a}/messages", json={"message": "x"})
                # Server A got the 429 (and told the fleet); now B asks.
                await eventually(
                    lambda: sum(s.rate_limited for s in a.runtime.limiters.statistics()) == 1
                )
                second = await client_b.post(f"/sessions/{sid_b}/messages", json={"message": "y"})
                for client, answer in ((client_a, first), (client_b, second)):
                    await _until_done(client, answer.json()["id"])
    refused, *later = fake.arrivals
    assert refused.status == 429
    assert len(later) == 2
    # Server B never had a 429 of its own, yet it waited out the pause A was told of.
    assert all(arrival.at - refused.at >= 0.9 for arrival in later)


async def _until_done(client: httpx.AsyncClient, request_id: str) -> None:
    async with asyncio.timeout(10):
        response = await client.get(f"/requests/{request_id}/events", headers=SSE)
    assert parse_sse(response.text)[-1]["event"] == "done"


async def test_an_unreachable_redis_stops_start_up_with_its_url(
    make_settings: MakeSettings,
) -> None:
    runtime = Runtime(make_settings(redis_url="redis://127.0.0.1:9/0"))
    with pytest.raises(UsageError, match=r"Redis at 'redis://127\.0\.0\.1:9/0' does not answer"):
        await runtime.start()


async def test_a_request_running_on_one_server_is_cancelled_through_another(
    tmp_path: Path, make_settings: MakeSettings, redis_url: str
) -> None:
    # Two servers on one database (a shared SQLite file here; PostgreSQL in a deployment).
    shared = tmp_path / "shared"
    model = HeldModel()
    provider = ScriptedProvider(script=model)
    a_settings = make_settings(redis_url=redis_url, data_dir=shared)
    b_settings = make_settings(redis_url=redis_url, data_dir=shared)
    async with (
        started(a_settings, provider=provider) as a,
        started(b_settings, provider=provider) as b,
    ):
        async with a.client() as client_a, b.client() as client_b:
            sid = (await client_a.post("/sessions", json={})).json()["id"]
            held = (await send(client_a, sid, "one")).json()["id"]
            await model.gate.wait_for(1)
            # B sees the request running in the database, and has it cancelled where it runs.
            assert (await client_b.get(f"/requests/{held}")).json()["status"] == "running"
            # Its events are A's to serve: B says so instead of "no longer retained".
            elsewhere = await client_b.get(f"/requests/{held}/events", headers=SSE)
            assert elsewhere.status_code == 421
            assert "runs on another server" in elsewhere.json()["detail"]
            assert (await client_b.delete(f"/requests/{held}")).json() == {"cancelled": 1}
            events = parse_sse((await client_a.get(f"/requests/{held}/events", headers=SSE)).text)
            assert events[-1]["event"] == "cancelled"
            assert "DELETE /requests" in events[-1]["reason"]
            # A request that ended is not cancelled twice, on any server.
            assert (await client_b.delete(f"/requests/{held}")).json() == {"cancelled": 0}
            # The session's requests, through B: both of A's held ones.
            two = [(await send(client_a, sid, t)).json()["id"] for t in ("two", "three")]
            await model.gate.wait_for(3)
            assert (await client_b.post(f"/sessions/{sid}/cancel")).json() == {"cancelled": 2}
            for request_id in two:
                events = parse_sse(
                    (await client_a.get(f"/requests/{request_id}/events", headers=SSE)).text
                )
                assert events[-1]["event"] == "cancelled"
            # Another tenant cannot cancel through the fleet what it cannot see.
            async with b.client("globex") as other:
                assert (await other.post(f"/sessions/{sid}/cancel")).status_code == 404


async def send(client: httpx.AsyncClient, sid: str, text: str) -> httpx.Response:
    return await client.post(f"/sessions/{sid}/messages", json={"message": text})


async def test_cancel_orders_survive_a_dropped_redis_connection(redis_url: str) -> None:
    from corral.server._fleet import CancelOrder, FleetCancel

    fleet = await RedisFleet.connect(redis_url)
    orders: list[CancelOrder] = []

    def cancel_here(order: CancelOrder) -> int:
        orders.append(order)
        return 1

    receiver = FleetCancel(fleet.redis, cancel_here, reply_timeout_s=2.0)
    await receiver.start()
    try:
        order = CancelOrder("acme", "request", "req_1", "test")
        assert await receiver.cancel_elsewhere(order) == 1
        # Redis drops the subscriber's connection (a restart, a proxy, CLIENT KILL): the
        # listener reconnects, subscribes again, and the next order still arrives.
        assert await fleet.redis.client_kill_filter(_type="pubsub") >= 1
        for _ in range(50):  # orders sent while it reconnects find nobody: try for 10 s
            if await receiver.cancel_elsewhere(order) == 1:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the listener did not come back after its connection dropped")
        assert len(orders) >= 2
    finally:
        await receiver.aclose()
        await fleet.aclose()
