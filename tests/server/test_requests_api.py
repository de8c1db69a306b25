"""Requests over HTTP, in process: SSE and JSON modes, resumption, idempotency, cancellation."""

from __future__ import annotations

import asyncio

import httpx

from corral.providers.scripted import ScriptedProvider
from tests.server.conftest import MakeSettings, Server, started
from tests.server.helpers import HeldModel, parse_sse

SSE = {"accept": "text/event-stream"}


async def new_session(client: httpx.AsyncClient, **body: object) -> str:
    response = await client.post("/sessions", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_message_streams_sse_with_tools_in_the_sessions_directory(server: Server) -> None:
    async with server.client() as client:
        sid = await new_session(client)
        response = await client.post(
            f"/sessions/{sid}/messages",
            json={"message": "write 'hello corral' to notes/a.txt, then read notes/a.txt"},
            headers=SSE,
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    request_id = response.headers["x-request-id"]
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))  # id = seq, no gaps
    assert all(e["seq"] == e["id"] and e["request_id"] == request_id for e in events)
    assert events[0]["event"] == "started"
    assert events[-1]["event"] == "done"
    finished = {
        e["result"]["name"]: e["result"] for e in events if e["event"] == "tool_call_finished"
    }
    assert finished["write_file"]["status"] == "ok"
    assert finished["read_file"] == {
        **finished["read_file"],
        "status": "ok",
        "content": "hello corral",
    }
    # The file is in the session's own working directory under the data directory.
    written = server.runtime.work_root / "acme" / sid / "notes" / "a.txt"
    assert written.read_text() == "hello corral"
    assert "hello corral" in events[-1]["result"]["text"]


async def test_file_tools_stay_inside_the_session_directory(server: Server) -> None:
    async with server.client() as client:
        sid = await new_session(client)
        response = await client.post(
            f"/sessions/{sid}/messages", json={"message": "read ../../secret.txt"}, headers=SSE
        )
    events = parse_sse(response.text)
    result = next(e["result"] for e in events if e["event"] == "tool_call_finished")
    assert result["status"] == "error"
    assert "outside this session's directory" in result["content"]


async def test_json_mode_then_events_and_state(server: Server) -> None:
    async with server.client() as client:
        sid = await new_session(client)
        started_ = await client.post(f"/sessions/{sid}/messages", json={"message": "calculate 6*7"})
        assert started_.status_code == 202
        body = started_.json()
        request_id = body["id"]
        assert body["session_id"] == sid
        assert body["created"] is True
        assert started_.headers["location"] == f"/requests/{request_id}"

        streamed = await client.get(f"/requests/{request_id}/events", headers=SSE)
        events = parse_sse(streamed.text)
        assert events[-1]["event"] == "done"
        assert "42.0" in events[-1]["result"]["text"]

        state = (await client.get(f"/requests/{request_id}")).json()
        assert state["status"] == "done"
        assert state["events"] == len(events)
        assert "42.0" in state["result"]["text"]

        history = (await client.get(f"/sessions/{sid}/messages")).json()
        assert [m["seq"] for m in history] == [1, 2, 3, 4]
        assert [m["message"]["role"] for m in history] == ["user", "assistant", "tool", "assistant"]
        assert {m["request_id"] for m in history} == {request_id}
        assert (await client.get(f"/sessions/{sid}")).json()["messages"] == 4


async def test_resume_after_last_event_id(server: Server) -> None:
    async with server.client() as client:
        sid = await new_session(client)
        request_id = (
            await client.post(f"/sessions/{sid}/messages", json={"message": "calculate 1+1"})
        ).json()["id"]
        whole = parse_sse((await client.get(f"/requests/{request_id}/events", headers=SSE)).text)
        resumed = await client.get(
            f"/requests/{request_id}/events", headers={**SSE, "last-event-id": "5"}
        )
        rest = parse_sse(resumed.text)
        assert rest == whole[5:]
        by_query = parse_sse(
            (await client.get(f"/requests/{request_id}/events?after=7", headers=SSE)).text
        )
        assert by_query == whole[7:]
        # Past the end: nothing more (the terminal event was already seen).
        done = await client.get(
            f"/requests/{request_id}/events", headers={**SSE, "last-event-id": str(len(whole))}
        )
        assert parse_sse(done.text) == []


async def test_idempotency_key_attaches_to_the_first_request(make_settings: MakeSettings) -> None:
    provider = ScriptedProvider(script=lambda request: "once")
    async with started(make_settings(), provider=provider) as running:
        async with running.client() as client:
            sid = await new_session(client)
            key = {"idempotency-key": "order-42"}
            first = await client.post(
                f"/sessions/{sid}/messages", json={"message": "hi"}, headers=key
            )
            again = await client.post(
                f"/sessions/{sid}/messages", json={"message": "hi"}, headers=key
            )
            assert first.status_code == 202
            assert again.status_code == 200
            assert first.json()["id"] == again.json()["id"]
            assert again.json()["created"] is False
            streamed = await client.post(
                f"/sessions/{sid}/messages", json={"message": "hi"}, headers={**key, **SSE}
            )
            assert streamed.headers["x-request-id"] == first.json()["id"]
            assert parse_sse(streamed.text)[-1]["event"] == "done"
            # Concurrent retries with a new key: still one request.
            key2 = {"idempotency-key": "order-43"}
            answers = await asyncio.gather(
                *(
                    client.post(f"/sessions/{sid}/messages", json={"message": "hey"}, headers=key2)
                    for _ in range(5)
                )
            )
            assert len({a.json()["id"] for a in answers}) == 1
            assert sorted(a.status_code for a in answers) == [200, 200, 200, 200, 202]
            # The key belongs to its session.
            other = await new_session(client)
            wrong = await client.post(
                f"/sessions/{other}/messages", json={"message": "hi"}, headers=key
            )
            assert wrong.status_code == 422
            assert "order-42" in wrong.json()["detail"]
            await client.get(f"/requests/{answers[0].json()['id']}/events", headers=SSE)
    assert provider.calls == 2  # one model call per key
    history_users = [m.content for m in provider.requests[1].messages if m.role == "user"]
    assert history_users.count("hey") == 1


async def test_reject_policy_answers_409_with_the_running_id(make_settings: MakeSettings) -> None:
    model = HeldModel()
    async with started(make_settings(), provider=ScriptedProvider(script=model)) as running:
        async with running.client() as client:
            sid = await new_session(client)
            first = (
                await client.post(f"/sessions/{sid}/messages", json={"message": "slow"})
            ).json()
            await model.gate.wait_for(1)
            busy = await client.post(
                f"/sessions/{sid}/messages", json={"message": "quick", "policy": "reject"}
            )
            assert busy.status_code == 409
            assert busy.json()["running_request_id"] == first["id"]
            assert first["id"] in busy.json()["detail"]
            session = (await client.get(f"/sessions/{sid}")).json()
            assert session["active_requests"] == [first["id"]]
            model.gate.open()
            events = parse_sse(
                (await client.get(f"/requests/{first['id']}/events", headers=SSE)).text
            )
            assert events[-1]["event"] == "done"
            again = await client.post(
                f"/sessions/{sid}/messages", json={"message": "quick", "policy": "reject"}
            )
            assert again.status_code == 202
            await client.get(f"/requests/{again.json()['id']}/events", headers=SSE)


async def test_cancel_one_request(make_settings: MakeSettings) -> None:
    model = HeldModel()
    async with started(make_settings(), provider=ScriptedProvider(script=model)) as running:
        async with running.client() as client:
            sid = await new_session(client)
            one = (await client.post(f"/sessions/{sid}/messages", json={"message": "a"})).json()
            two = (await client.post(f"/sessions/{sid}/messages", json={"message": "b"})).json()
            await model.gate.wait_for(2)
            cancelled = await client.delete(f"/requests/{one['id']}")
            assert cancelled.json() == {"cancelled": 1}
            events = parse_sse(
                (await client.get(f"/requests/{one['id']}/events", headers=SSE)).text
            )
            assert events[-1]["event"] == "cancelled"
            assert "DELETE" in events[-1]["reason"]
            assert (await client.delete(f"/requests/{one['id']}")).json() == {"cancelled": 0}
            assert (await client.get(f"/requests/{two['id']}")).json()["status"] == "running"
            model.gate.open()
            events = parse_sse(
                (await client.get(f"/requests/{two['id']}/events", headers=SSE)).text
            )
            assert events[-1]["event"] == "done"
            state = (await client.get(f"/requests/{one['id']}")).json()
            assert state["status"] == "cancelled"
        # The store has the final statuses too.
        stored = await running.runtime.store.get_request("acme", one["id"])
        assert stored.status == "cancelled"
        assert (await running.runtime.store.get_request("acme", two["id"])).status == "done"


async def test_cancel_all_requests_of_a_session(make_settings: MakeSettings) -> None:
    model = HeldModel()
    async with started(make_settings(), provider=ScriptedProvider(script=model)) as running:
        async with running.client() as client:
            sid = await new_session(client)
            other = await new_session(client)
            ids = [
                (await client.post(f"/sessions/{sid}/messages", json={"message": m})).json()["id"]
                for m in ("a", "b", "c")
            ]
            spared = (
                await client.post(f"/sessions/{other}/messages", json={"message": "d"})
            ).json()
            await model.gate.wait_for(4)
            response = await client.post(f"/sessions/{sid}/cancel")
            assert response.json() == {"cancelled": 3}
            for request_id in ids:
                events = parse_sse(
                    (await client.get(f"/requests/{request_id}/events", headers=SSE)).text
                )
                assert events[-1]["event"] == "cancelled"
            assert (await client.get(f"/requests/{spared['id']}")).json()["status"] == "running"
            model.gate.open()
            await client.get(f"/requests/{spared['id']}/events", headers=SSE)
            # Cancelled turns that had started are in the history, consistent and marked partial.
            history = (await client.get(f"/sessions/{sid}/messages")).json()
            assert [m["seq"] for m in history] == list(range(1, len(history) + 1))
            assert {m["request_id"] for m in history} == set(ids)
            assert all(
                m["message"].get("partial") for m in history if m["message"]["role"] == "assistant"
            )
