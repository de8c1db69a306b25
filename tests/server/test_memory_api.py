"""Versioned memory over HTTP: ETags, If-Match, 412 and 428, merge patches, counters, lists."""

from __future__ import annotations

import asyncio

from tests.server.conftest import Server

KEY = "/memory/workspace:plans/roadmap"


async def test_two_writers_one_gets_412_with_the_current_document(server: Server) -> None:
    async with server.client() as alice, server.client() as bob:
        created = await alice.put(
            KEY, json={"value": {"items": []}}, headers={"if-none-match": "*"}
        )
        assert created.status_code == 201
        assert created.headers["etag"] == '"1"'
        # Both read version 1.
        read_a, read_b = await alice.get(KEY), await bob.get(KEY)
        assert read_a.headers["etag"] == read_b.headers["etag"] == '"1"'

        doc_a = {"items": [*read_a.json()["value"]["items"], "from alice"]}
        doc_b = {"items": [*read_b.json()["value"]["items"], "from bob"]}
        wrote_a = await alice.put(KEY, json={"value": doc_a}, headers={"if-match": '"1"'})
        assert wrote_a.status_code == 200
        assert wrote_a.headers["etag"] == '"2"'
        stale = await bob.put(KEY, json={"value": doc_b}, headers={"if-match": '"1"'})
        assert stale.status_code == 412
        body = stale.json()
        assert body["version"] == 2
        assert body["current"]["value"] == {"items": ["from alice"]}
        assert stale.headers["etag"] == '"2"'

        # Bob redoes his change on what is there now: nothing is lost.
        redone = {"items": [*body["current"]["value"]["items"], "from bob"]}
        wrote_b = await bob.put(KEY, json={"value": redone}, headers={"if-match": '"2"'})
        assert wrote_b.status_code == 200
        final = (await alice.get(KEY)).json()
        assert final["value"] == {"items": ["from alice", "from bob"]}
        assert final["version"] == 3
    audit = await server.runtime.store.audit("acme", scope="workspace:plans", key="roadmap")
    assert [(a.base_version, a.new_version) for a in audit] == [(0, 1), (1, 2), (2, 3)]


async def test_missing_if_match_is_428(server: Server) -> None:
    async with server.client() as client:
        await client.put(KEY, json={"value": {"a": 1}}, headers={"if-none-match": "*"})
        assert (await client.put(KEY, json={"value": 2})).status_code == 428
        assert (await client.patch(KEY, json={"a": 2})).status_code == 428
        assert (await client.delete(KEY)).status_code == 428
        bad = await client.put(KEY, json={"value": 2}, headers={"if-match": "yesterday"})
        assert bad.status_code == 422
        # Creating over an existing key is a 412 with what is there.
        again = await client.put(KEY, json={"value": 3}, headers={"if-none-match": "*"})
        assert again.status_code == 412
        assert again.json()["current"]["value"] == {"a": 1}
        assert (await client.get(KEY)).json()["value"] == {"a": 1}


async def test_merge_patch_delete_and_recreate(server: Server) -> None:
    async with server.client() as client:
        await client.put(
            KEY,
            json={"value": {"title": "v1", "tags": {"a": 1, "b": 2}}},
            headers={"if-match": '"0"'},
        )
        patched = await client.patch(
            KEY,
            json={"tags": {"b": None, "c": 3}, "owner": "ada"},
            headers={"if-match": '"1"', "content-type": "application/merge-patch+json"},
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["value"] == {"title": "v1", "tags": {"a": 1, "c": 3}, "owner": "ada"}
        stale = await client.patch(KEY, json={"title": "v2"}, headers={"if-match": '"1"'})
        assert stale.status_code == 412
        assert stale.json()["version"] == 2
        assert (await client.delete(KEY, headers={"if-match": '"1"'})).status_code == 412
        assert (await client.delete(KEY, headers={"if-match": '"2"'})).status_code == 204
        assert (await client.get(KEY)).status_code == 404
        # A conditional write to a key that is gone is a 404.
        assert (
            await client.patch(KEY, json={"a": 1}, headers={"if-match": '"2"'})
        ).status_code == 404
        recreated = await client.put(KEY, json={"value": "again"}, headers={"if-none-match": "*"})
        assert recreated.json()["version"] == 4  # versions never repeat
        listed = (await client.get("/memory/workspace:plans")).json()
        assert [r["key"] for r in listed] == ["roadmap"]


async def test_fifty_concurrent_increments_land_as_fifty(server: Server) -> None:
    async with server.client() as client:
        answers = await asyncio.gather(
            *(client.post("/memory/agent:counter/hits/increment", json={}) for _ in range(50))
        )
        assert {a.status_code for a in answers} == {200}
        record = (await client.get("/memory/agent:counter/hits")).json()
        assert record["value"] == 50
        assert record["version"] == 50
        appended = await asyncio.gather(
            *(client.post("/memory/agent:counter/log/append", json={"item": i}) for i in range(20))
        )
        assert {a.status_code for a in appended} == {200}
        log = (await client.get("/memory/agent:counter/log")).json()["value"]
        assert sorted(log) == list(range(20))
        by = await client.post("/memory/agent:counter/hits/increment", json={"by": 2.5})
        assert by.json()["value"] == 52.5
        not_a_list = await client.post("/memory/agent:counter/hits/append", json={"item": 1})
        assert not_a_list.status_code == 422


async def test_bad_scope_and_key_are_422(server: Server) -> None:
    async with server.client() as client:
        assert (await client.get("/memory/nowhere/x")).status_code == 422
        bad_key = await client.post("/memory/agent:a/%20bad/increment", json={})
        assert bad_key.status_code == 422
        assert "memory key" in bad_key.json()["detail"]


async def test_writer_is_recorded_in_the_audit(server: Server) -> None:
    async with server.client(**{"x-corral-writer": "planner-7"}) as client:
        await client.post("/memory/agent:a/n/increment", json={})
    audit = await server.runtime.store.audit("acme", scope="agent:a")
    assert [a.writer for a in audit] == ["planner-7"]
