"""Tenant isolation: another tenant's session, request or memory answers 404, on every route."""

from __future__ import annotations

from tests.server.conftest import Server
from tests.server.helpers import parse_sse

SSE = {"accept": "text/event-stream"}


async def test_another_tenants_things_are_404_on_every_endpoint(server: Server) -> None:
    async with server.client("acme") as acme, server.client("globex") as globex:
        sid = (await acme.post("/sessions", json={})).json()["id"]
        request_id = (
            await acme.post(
                f"/sessions/{sid}/messages",
                json={"message": "calculate 2+2"},
                headers={"idempotency-key": "k1"},
            )
        ).json()["id"]
        await acme.get(f"/requests/{request_id}/events", headers=SSE)
        mem = "/memory/workspace:shared/doc"
        await acme.put(mem, json={"value": {"secret": 1}}, headers={"if-none-match": "*"})

        probes = [
            ("GET", f"/sessions/{sid}", None, {}),
            ("DELETE", f"/sessions/{sid}", None, {}),
            ("GET", f"/sessions/{sid}/messages", None, {}),
            ("POST", f"/sessions/{sid}/messages", {"message": "hi"}, {}),
            ("POST", f"/sessions/{sid}/messages", {"message": "hi"}, SSE),
            ("POST", f"/sessions/{sid}/cancel", None, {}),
            ("GET", f"/requests/{request_id}", None, {}),
            ("GET", f"/requests/{request_id}/events", None, SSE),
            ("DELETE", f"/requests/{request_id}", None, {}),
            ("GET", mem, None, {}),
            ("PUT", mem, {"value": 1}, {"if-match": '"1"'}),
            ("PATCH", mem, {"secret": 2}, {"if-match": '"1"'}),
            ("DELETE", mem, None, {"if-match": '"1"'}),
        ]
        for method, path, body, headers in probes:
            response = await globex.request(method, path, json=body, headers=headers)
            assert response.status_code == 404, (method, path, response.status_code, response.text)

        # Lists show only the tenant's own.
        assert (await globex.get("/sessions")).json() == []
        assert (await globex.get("/memory/workspace:shared")).json() == []
        # Counters and lists are per tenant: globex's increment starts its own.
        await acme.post("/memory/agent:x/n/increment", json={"by": 10})
        theirs = await globex.post("/memory/agent:x/n/increment", json={})
        assert theirs.json()["value"] == 1
        await globex.post("/memory/agent:x/l/append", json={"item": "g"})
        assert (await acme.get("/memory/agent:x/l")).status_code == 404
        # Creating the same key is globex's own key, not a conflict with acme's.
        own = await globex.put(mem, json={"value": "mine"}, headers={"if-none-match": "*"})
        assert own.status_code == 201
        # Idempotency keys are per tenant too.
        gsid = (await globex.post("/sessions", json={})).json()["id"]
        theirs_request = await globex.post(
            f"/sessions/{gsid}/messages", json={"message": "hi"}, headers={"idempotency-key": "k1"}
        )
        assert theirs_request.status_code == 202
        assert theirs_request.json()["id"] != request_id
        await globex.get(f"/requests/{theirs_request.json()['id']}/events", headers=SSE)

        # Nothing of acme's changed.
        assert (await acme.get(f"/sessions/{sid}")).status_code == 200
        assert (await acme.get(mem)).json()["value"] == {"secret": 1}
        assert (await acme.get("/memory/agent:x/n")).json()["value"] == 10
        events = parse_sse((await acme.get(f"/requests/{request_id}/events", headers=SSE)).text)
        assert events[-1]["event"] == "done"
