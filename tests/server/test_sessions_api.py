"""Sessions over HTTP: create, list, read, delete; bad input; authentication."""

from __future__ import annotations

from collections.abc import AsyncIterator

from tests.server.conftest import Server


async def test_sessions_crud(server: Server) -> None:
    async with server.client() as client:
        created = await client.post("/sessions", json={"metadata": {"user": "ada"}})
        assert created.status_code == 201, created.text
        session = created.json()
        assert session["agent"] == "demo"
        assert session["policy"] == "concurrent"
        assert session["metadata"] == {"user": "ada"}
        assert session["messages"] == 0
        other = (await client.post("/sessions", json={"policy": "enqueue"})).json()
        assert other["policy"] == "enqueue"

        listed = (await client.get("/sessions")).json()
        assert [s["id"] for s in listed] == [session["id"], other["id"]]
        got = await client.get(f"/sessions/{session['id']}")
        assert got.status_code == 200
        assert got.json()["id"] == session["id"]

        deleted = await client.delete(f"/sessions/{session['id']}")
        assert deleted.status_code == 204
        assert (await client.get(f"/sessions/{session['id']}")).status_code == 404
        assert [s["id"] for s in (await client.get("/sessions")).json()] == [other["id"]]
        assert (await client.delete(f"/sessions/{session['id']}")).status_code == 404
    # Its working directory went with it.
    assert not (server.runtime.work_root / "acme" / session["id"]).exists()


async def test_unknown_session_is_404_everywhere(server: Server) -> None:
    async with server.client() as client:
        for method, path, body in [
            ("GET", "/sessions/ses_nope", None),
            ("DELETE", "/sessions/ses_nope", None),
            ("GET", "/sessions/ses_nope/messages", None),
            ("POST", "/sessions/ses_nope/messages", {"message": "hi"}),
            ("POST", "/sessions/ses_nope/cancel", None),
            ("GET", "/requests/req_nope", None),
            ("GET", "/requests/req_nope/events", None),
            ("DELETE", "/requests/req_nope", None),
        ]:
            response = await client.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.text)
            assert "nope" in response.json()["detail"]


async def test_bad_input_is_422_naming_the_field(server: Server) -> None:
    async with server.client() as client:
        session = (await client.post("/sessions", json={})).json()
        url = f"/sessions/{session['id']}/messages"

        broken = await client.post(
            url, content=b'{"message": ', headers={"content-type": "application/json"}
        )
        assert broken.status_code == 422
        assert broken.json()["detail"][0]["type"] == "json_invalid"

        missing = await client.post(url, json={"text": "hi"})
        assert missing.status_code == 422
        assert "body.message: Field required" in missing.json()["message"]
        assert "body.text" in missing.json()["message"]  # extra fields are refused too

        empty = await client.post(url, json={"message": ""})
        assert empty.status_code == 422
        assert "body.message" in empty.json()["message"]

        policy = await client.post(url, json={"message": "hi", "policy": "sometimes"})
        assert policy.status_code == 422
        assert "body.policy" in policy.json()["message"]

        agent = await client.post("/sessions", json={"agent": "nobody"})
        assert agent.status_code == 422
        assert "'nobody'" in agent.json()["detail"]
        assert "demo" in agent.json()["detail"]

        limit = await client.get("/sessions", params={"limit": 0})
        assert limit.status_code == 422
        assert "query.limit" in limit.json()["message"]

        # The message route's own headers and flag, validated as FastAPI parameters would be.
        long_key = await client.post(
            url, json={"message": "hi"}, headers={"idempotency-key": "k" * 201}
        )
        assert long_key.status_code == 422
        assert long_key.json()["detail"][0]["type"] == "string_too_long"
        assert (
            "header.idempotency-key: String should have at most 200 characters"
            in (long_key.json()["message"])
        )
        both = await client.post(
            f"{url}?cancel_on_disconnect=perhaps",
            json={"message": "hi"},
            headers={"idempotency-key": ""},
        )
        assert both.status_code == 422
        assert "header.idempotency-key" in both.json()["message"]
        assert "query.cancel_on_disconnect" in both.json()["message"]
        unchanged = (await client.get(f"/sessions/{session['id']}")).json()
        assert (unchanged["messages"], unchanged["active_requests"]) == (0, [])  # none started


async def test_the_message_routes_headers_and_flag_are_in_the_openapi_document(
    server: Server,
) -> None:
    async with server.client() as client:
        document = (await client.get("/openapi.json")).json()
    operation = document["paths"]["/sessions/{session_id}/messages"]["post"]
    parameters = {(p["in"], p["name"]): p for p in operation["parameters"]}
    assert set(parameters) == {
        ("path", "session_id"),
        ("header", "accept"),
        ("header", "idempotency-key"),
        ("header", "last-event-id"),
        ("query", "cancel_on_disconnect"),
    }
    assert parameters["header", "idempotency-key"]["schema"]["maxLength"] == 200
    assert parameters["query", "cancel_on_disconnect"]["schema"]["type"] == "boolean"


async def test_body_over_the_limit_is_413(make_settings) -> None:
    from tests.server.conftest import started

    async with started(make_settings(max_body_bytes=1000)) as running:
        async with running.client() as client:
            session = (await client.post("/sessions", json={})).json()
            big = await client.post(
                f"/sessions/{session['id']}/messages", json={"message": "x" * 2000}
            )
            assert big.status_code == 413
            limit = "over the limit of 1000 bytes (CORRAL_MAX_BODY_BYTES)"
            assert limit in big.json()["detail"]

            # A body without a declared length is counted as it is read.
            async def chunks() -> AsyncIterator[bytes]:
                yield b'{"agent": "demo", "metadata": {"pad": "'
                for _ in range(10):
                    yield b"x" * 200
                yield b'"}}'

            chunked = await client.post(
                "/sessions", content=chunks(), headers={"content-type": "application/json"}
            )
            assert chunked.status_code == 413
            assert limit in chunked.json()["detail"]
            assert len((await client.get("/sessions")).json()) == 1  # nothing was created
            small = await client.post(f"/sessions/{session['id']}/messages", json={"message": "hi"})
            assert small.status_code == 202
            # Let the request end before the server checks it is idle.
            events = await client.get(f"/requests/{small.json()['id']}/events")
            assert "event: done" in events.text


async def test_api_key_required_and_checked(server: Server) -> None:
    async with server.client() as client:
        del client.headers["authorization"]
        missing = await client.get("/sessions")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        bad = await client.get("/sessions", headers={"authorization": "Bearer crl_nope"})
        assert bad.status_code == 401
        assert "not valid" in bad.json()["detail"]
        # Health, readiness, metrics and the API's description need no key.
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert (await client.get(path)).status_code == 200, path


async def test_revoked_key_is_refused(server: Server) -> None:
    key, record = await server.runtime.store.create_api_key("acme", name="short-lived")
    async with server.client(authorization=f"Bearer {key}") as client:
        assert (await client.get("/sessions")).status_code == 200
        await server.runtime.store.revoke_api_key("acme", record.id)
        assert (await client.get("/sessions")).status_code == 401
