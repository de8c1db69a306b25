"""Histories persist: a turn is stored before its final event, and sessions survive restarts."""

from __future__ import annotations

import asyncio

from corral.providers.scripted import ScriptedProvider
from tests.server.conftest import MakeSettings, started
from tests.server.helpers import parse_sse

SSE = {"accept": "text/event-stream"}


async def _restart_keeps_history(make_settings: MakeSettings, **values: object) -> None:
    settings = make_settings(**values)
    async with started(settings) as first:
        async with first.client() as client:
            sid = (await client.post("/sessions", json={"policy": "enqueue"})).json()["id"]
            ids = []
            for text in ("calculate 1+2", "hello there"):
                response = await client.post(
                    f"/sessions/{sid}/messages", json={"message": text}, headers=SSE
                )
                events = parse_sse(response.text)
                assert events[-1]["event"] == "done"
                ids.append(response.headers["x-request-id"])
                # The turn was in the store before the final event went out.
                stored = await first.runtime.store.list_messages("acme", sid)
                assert stored[-1].request_id == ids[-1]
            before = (await client.get(f"/sessions/{sid}/messages")).json()
    assert [m["seq"] for m in before] == [1, 2, 3, 4, 5, 6]

    async with started(settings) as second:
        async with second.client() as client:
            session = (await client.get(f"/sessions/{sid}")).json()
            assert session["policy"] == "enqueue"
            assert session["messages"] == 6
            assert (await client.get(f"/sessions/{sid}/messages")).json() == before
            # A request of the previous run: its state is stored, its events are gone.
            old = (await client.get(f"/requests/{ids[0]}")).json()
            assert old["status"] == "done"
            assert old["events"] is None
            assert (await client.get(f"/requests/{ids[0]}/events", headers=SSE)).status_code == 410
            # The session goes on from its stored history.
            response = await client.post(
                f"/sessions/{sid}/messages", json={"message": "and now?"}, headers=SSE
            )
            events = parse_sse(response.text)
            assert events[0]["event"] == "started"
            assert events[0]["history_len"] == 6
            after = (await client.get(f"/sessions/{sid}/messages")).json()
            assert [m["seq"] for m in after] == list(range(1, 9))
            assert after[6]["message"] == {"role": "user", "content": "and now?"}


async def test_history_survives_a_restart_on_sqlite(make_settings: MakeSettings) -> None:
    await _restart_keeps_history(make_settings)


async def test_history_survives_a_restart_on_postgresql(
    make_settings: MakeSettings, fresh_postgres_url: str
) -> None:
    await _restart_keeps_history(make_settings, database_url=fresh_postgres_url)


async def test_sessions_beyond_the_bound_are_reloaded(make_settings: MakeSettings) -> None:
    async with started(make_settings(max_loaded_sessions=2)) as running:
        async with running.client() as client:
            sids = [(await client.post("/sessions", json={})).json()["id"] for _ in range(4)]
            assert len(running.runtime.sessions) == 2
            response = await client.post(
                f"/sessions/{sids[0]}/messages", json={"message": "hi"}, headers=SSE
            )
            assert parse_sse(response.text)[-1]["event"] == "done"
            assert len(running.runtime.sessions) == 2


async def test_concurrent_turns_are_stored_in_history_order(make_settings: MakeSettings) -> None:
    release: dict[str, asyncio.Event] = {}

    async def model(request) -> str:
        text = next(m.content for m in reversed(request.messages) if m.role == "user")
        await release.setdefault(text, asyncio.Event()).wait()
        return f"echo {text}"

    async with started(make_settings(), provider=ScriptedProvider(script=model)) as running:
        async with running.client() as client:
            sid = (await client.post("/sessions", json={})).json()["id"]
            ids = {
                text: (
                    await client.post(f"/sessions/{sid}/messages", json={"message": text})
                ).json()["id"]
                for text in ("a", "b", "c")
            }
            for text in ("c", "a", "b"):  # they end in this order
                release.setdefault(text, asyncio.Event()).set()
                await client.get(f"/requests/{ids[text]}/events", headers=SSE)
            stored = await running.runtime.store.list_messages("acme", sid)
            session = running.runtime.loaded("acme", sid)
            assert session is not None
            assert [m.request_id for m in stored] == [e.request_id for e in session.entries]
            assert [m.request_id for m in stored][::2] == [ids["c"], ids["a"], ids["b"]]


async def test_the_store_failing_does_not_hang_readers(make_settings: MakeSettings) -> None:
    async with started(make_settings(), check_idle=False) as running:
        store = running.runtime.store

        async def broken(*args: object, **kwargs: object) -> object:
            raise OSError("disk on fire")

        store.finish_request = broken  # type: ignore[method-assign,assignment]
        async with running.client() as client:
            sid = (await client.post("/sessions", json={})).json()["id"]
            response = await client.post(
                f"/sessions/{sid}/messages", json={"message": "hi"}, headers=SSE
            )
            assert parse_sse(response.text)[-1]["event"] == "done"
        assert running.runtime.statistics().persist_failures == 1


async def _fifty_concurrent_requests(make_settings: MakeSettings, **values: object) -> None:
    """50 requests in one session at once, over HTTP: every message stored once, numbered 1..N."""
    async with started(make_settings(**values)) as running:
        async with running.client() as client:
            sid = (await client.post("/sessions", json={"policy": "concurrent"})).json()["id"]
            responses = await asyncio.gather(
                *(
                    client.post(
                        f"/sessions/{sid}/messages", json={"message": f"hello {n}"}, headers=SSE
                    )
                    for n in range(50)
                )
            )
            assert all(parse_sse(r.text)[-1]["event"] == "done" for r in responses)
            stored = (await client.get(f"/sessions/{sid}/messages?limit=1000")).json()
    assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))  # gap-free
    users = [m["message"]["content"] for m in stored if m["message"]["role"] == "user"]
    assert sorted(users) == sorted(f"hello {n}" for n in range(50))  # each exactly once
    by_request: dict[str, list[int]] = {}
    for m in stored:
        by_request.setdefault(m["request_id"], []).append(m["seq"])
    assert len(by_request) == 50
    for seqs in by_request.values():  # each turn is one consecutive run: user, then answer
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert len(seqs) >= 2


async def test_fifty_concurrent_requests_on_sqlite(make_settings: MakeSettings) -> None:
    await _fifty_concurrent_requests(make_settings)


async def test_fifty_concurrent_requests_on_postgresql(
    make_settings: MakeSettings, fresh_postgres_url: str
) -> None:
    await _fifty_concurrent_requests(make_settings, database_url=fresh_postgres_url)
