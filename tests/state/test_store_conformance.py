"""One suite, every store: in memory, SQLite and PostgreSQL must behave the same."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from corral import ClosedError, Message, NotFound, ToolCall, UsageError
from corral.errors import StateError, VersionConflict
from corral.state import MemoryRecord, Store, Tenant

W = "workspace:team"


# -- tenants and API keys ----------------------------------------------------------------------


async def test_tenants_are_created_and_read(store: Store) -> None:
    made = await store.create_tenant("acme", tenant_id="acme-1")
    assert made.id == "acme-1"
    assert made.name == "acme"
    got = await store.get_tenant("acme-1")
    assert (got.id, got.name) == ("acme-1", "acme")
    with pytest.raises(UsageError, match="'acme-1' already exists"):
        await store.create_tenant("again", tenant_id="acme-1")
    with pytest.raises(NotFound, match="no tenant 'nobody'"):
        await store.get_tenant("nobody")


async def test_api_keys_find_their_tenant_until_revoked(store: Store, tenant: Tenant) -> None:
    key, record = await store.create_api_key(tenant.id, name="ci")
    assert key.startswith(f"crl_{record.id}_")
    assert record.tenant_id == tenant.id
    assert record.name == "ci"
    assert record.revoked_at is None
    found = await store.tenant_for_key(key)
    assert found is not None
    assert found.id == tenant.id

    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    for bad in (tampered, "", "crl_x", key + "x", "Bearer " + key, None):
        assert await store.tenant_for_key(bad) is None  # type: ignore[arg-type]

    other_key, _ = await store.create_api_key(tenant.id)
    await store.revoke_api_key(tenant.id, record.id)
    await store.revoke_api_key(tenant.id, record.id)  # idempotent
    assert await store.tenant_for_key(key) is None
    assert await store.tenant_for_key(other_key) is not None
    with pytest.raises(NotFound, match="no tenant 'nobody'"):
        await store.create_api_key("nobody")


# -- tenant isolation ---------------------------------------------------------------------------


async def test_another_tenants_records_look_missing(
    store: Store, tenant: Tenant, other: Tenant
) -> None:
    a, b = tenant.id, other.id
    session = await store.create_session(a, session_id="s1")
    await store.append_messages(a, "s1", None, [Message.user("secret")])
    await store.record_request(a, "s1", request_id="r1", idempotency_key="k1")
    await store.memory_put(a, W, "plan", {"step": 1}, if_version=None, writer="alice")
    _, key_record = await store.create_api_key(a)

    async def missing(call: Any, message: str) -> None:
        with pytest.raises(NotFound) as caught:
            await call
        assert str(caught.value) == message

    await missing(store.get_session(b, "s1"), "no session 's1'")
    await missing(store.list_messages(b, "s1"), "no session 's1'")
    await missing(store.append_messages(b, "s1", None, [Message.user("x")]), "no session 's1'")
    await missing(store.append_messages(b, "s1", None, []), "no session 's1'")
    await missing(store.delete_session(b, "s1"), "no session 's1'")
    await missing(store.record_request(b, "s1"), "no session 's1'")
    await missing(store.get_request(b, "r1"), "no request 'r1'")
    await missing(store.start_request(b, "r1"), "no request 'r1'")
    await missing(store.finish_request(b, "r1", status="done"), "no request 'r1'")
    await missing(store.revoke_api_key(b, key_record.id), f"no API key {key_record.id!r}")
    assert await store.find_request(b, "k1") is None
    assert await store.list_sessions(b) == []
    assert await store.memory_get(b, W, "plan") is None
    assert await store.memory_list(b, W) == []
    assert await store.audit(b) == []
    for write in (
        store.memory_put(b, W, "plan", 2, if_version=1, writer="x"),
        store.memory_patch(b, W, "plan", {"a": 1}, if_version=1, writer="x"),
        store.memory_delete(b, W, "plan", if_version=1, writer="x"),
    ):
        with pytest.raises(VersionConflict) as caught:
            await write
        assert caught.value.actual is None
        assert caught.value.current is None

    # The same ids are free for the other tenant, and stay apart.
    mine = await store.create_session(b, session_id="s1")
    assert mine.last_seq == 0
    assert await store.append_messages(b, "s1", None, [Message.user("hello")]) == [1]
    made, created = await store.record_request(b, "s1", request_id="r1", idempotency_key="k1")
    assert created
    assert made.tenant_id == b
    await store.memory_put(b, W, "plan", "theirs", if_version=None, writer="bob")
    assert (await store.memory_get(a, W, "plan")) == (await store.memory_get(a, W, "plan"))
    mine_a = await store.memory_get(a, W, "plan")
    assert mine_a is not None
    assert mine_a.value == {"step": 1}
    assert mine_a.version == 1
    assert [m.message.content for m in await store.list_messages(a, "s1")] == ["secret"]
    assert (await store.get_session(a, "s1")).last_seq == session.last_seq + 1
    assert [e.writer for e in await store.audit(a)] == ["alice"]


# -- sessions and messages ----------------------------------------------------------------------


async def test_sessions_are_created_listed_and_deleted(store: Store, tenant: Tenant) -> None:
    t = tenant.id
    first = await store.create_session(t, metadata={"title": "plans", "n": [1, 2]})
    second = await store.create_session(t, session_id="named")
    assert first.metadata == {"title": "plans", "n": [1, 2]}
    assert first.last_seq == 0
    got = await store.get_session(t, first.id)
    assert (got.id, got.metadata, got.last_seq) == (first.id, first.metadata, 0)
    assert [s.id for s in await store.list_sessions(t)] == [first.id, "named"]
    assert [s.id for s in await store.list_sessions(t, limit=1)] == [first.id]
    with pytest.raises(UsageError, match="session 'named' already exists"):
        await store.create_session(t, session_id="named")
    with pytest.raises(NotFound, match="no tenant 'nobody'"):
        await store.create_session("nobody")

    await store.append_messages(t, second.id, "r1", [Message.user("hi")])
    await store.record_request(t, second.id, request_id="r1", idempotency_key="once")
    scope = f"session:{second.id}"
    await store.memory_put(t, scope, "scratch", 1, if_version=None, writer="agent")
    await store.memory_put(t, W, "kept", 1, if_version=None, writer="agent")
    await store.delete_session(t, second.id)

    with pytest.raises(NotFound):
        await store.get_session(t, second.id)
    with pytest.raises(NotFound):
        await store.get_request(t, "r1")
    assert await store.find_request(t, "once") is None
    assert await store.memory_get(t, scope, "scratch") is None
    assert await store.audit(t, scope=scope) == []
    assert await store.memory_get(t, W, "kept") is not None
    assert [s.id for s in await store.list_sessions(t)] == [first.id]
    # A new session under the old id starts afresh.
    await store.create_session(t, session_id=second.id)
    assert await store.append_messages(t, second.id, None, [Message.user("again")]) == [1]


async def test_messages_round_trip_in_order(store: Store, tenant: Tenant) -> None:
    t = tenant.id
    session = await store.create_session(t)
    call = ToolCall(id="c1", name="add", arguments={"a": 1, "b": [2, 3]})
    sent = [
        Message.system("be brief"),
        Message.user("ünïcødé ✓"),
        Message.assistant("", (call,)),
        Message("tool", "3", tool_call_id="c1", name="add", status="ok"),
        Message.assistant("cut", partial=True),
        Message.assistant("", (ToolCall(id="c2", name="x", arguments='{"raw": true}'),)),
    ]
    assert await store.append_messages(t, session.id, "r1", sent[:3]) == [1, 2, 3]
    assert await store.append_messages(t, session.id, None, sent[3:]) == [4, 5, 6]
    stored = await store.list_messages(t, session.id)
    assert [m.message for m in stored] == sent
    assert [m.seq for m in stored] == [1, 2, 3, 4, 5, 6]
    assert [m.request_id for m in stored] == ["r1", "r1", "r1", None, None, None]
    assert all(m.session_id == session.id and m.created_at.tzinfo for m in stored)
    assert [m.seq for m in await store.list_messages(t, session.id, after_seq=4)] == [5, 6]
    assert [m.seq for m in await store.list_messages(t, session.id, after_seq=1, limit=2)] == [
        2,
        3,
    ]
    assert await store.list_messages(t, session.id, after_seq=6) == []
    assert (await store.get_session(t, session.id)).last_seq == 6
    assert await store.append_messages(t, session.id, None, []) == []


async def test_concurrent_appends_get_gap_free_numbers_and_lose_nothing(
    store: Store, tenant: Tenant
) -> None:
    t = tenant.id
    session = await store.create_session(t)

    async def request(n: int) -> list[int]:
        # 1 to 3 messages per request: a whole turn goes in at once.
        turn = [Message.user(f"r{n}-m{i}") for i in range(1 + n % 3)]
        return await store.append_messages(t, session.id, f"r{n}", turn)

    results = await asyncio.gather(*(request(n) for n in range(50)))
    total = sum(1 + n % 3 for n in range(50))
    assert sorted(seq for seqs in results for seq in seqs) == list(range(1, total + 1))
    for n, seqs in enumerate(results):  # each request's messages are one consecutive run
        assert seqs == list(range(seqs[0], seqs[0] + 1 + n % 3))
    stored = await store.list_messages(t, session.id)
    assert [m.seq for m in stored] == list(range(1, total + 1))
    contents = [m.message.content for m in stored]
    expected = {f"r{n}-m{i}" for n in range(50) for i in range(1 + n % 3)}
    assert len(contents) == len(expected)
    assert set(contents) == expected
    for n, seqs in enumerate(results):
        assert [stored[s - 1].message.content for s in seqs] == [
            f"r{n}-m{i}" for i in range(1 + n % 3)
        ]
        assert {stored[s - 1].request_id for s in seqs} == {f"r{n}"}
    assert (await store.get_session(t, session.id)).last_seq == total


async def test_a_cancelled_append_takes_no_number(store: Store, tenant: Tenant) -> None:
    t = tenant.id
    session = await store.create_session(t)
    kept: list[str] = []
    # Cancel after 0, 1, 2, ... loop turns: somewhere before, during and after the transaction.
    for turns in range(0, 40, 3):
        text = f"cancelled after {turns}"
        task = asyncio.create_task(store.append_messages(t, session.id, None, [Message.user(text)]))
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        else:
            kept.append(text)  # it had finished: it counts
        await store.append_messages(t, session.id, None, [Message.user(f"after {turns}")])
        kept.append(f"after {turns}")
    stored = await store.list_messages(t, session.id)
    assert [m.seq for m in stored] == list(range(1, len(stored) + 1))
    # A cancelled call may still have happened (committing, or on SQLite, which finishes a
    # started call first): its message is then there once, and still takes no gap.
    assert [m.message.content for m in stored if m.message.content in kept] == kept
    assert len(stored) - len(kept) <= len(range(0, 40, 3))
    assert (await store.get_session(t, session.id)).last_seq == len(stored)


# -- requests -----------------------------------------------------------------------------------


async def test_requests_move_from_queued_to_finished_once(store: Store, tenant: Tenant) -> None:
    t = tenant.id
    session = await store.create_session(t)
    queued, created = await store.record_request(t, session.id, status="queued")
    assert created
    assert queued.status == "queued"
    assert queued.finished_at is None
    running = await store.start_request(t, queued.id)
    assert running.status == "running"
    with pytest.raises(StateError, match="is running"):
        await store.start_request(t, queued.id)
    done = await store.finish_request(t, queued.id, status="failed", error="boom")
    assert (done.status, done.error) == ("failed", "boom")
    assert done.finished_at is not None
    assert done.finished_at >= done.created_at
    with pytest.raises(StateError, match="is failed"):
        await store.finish_request(t, queued.id, status="done")
    got = await store.get_request(t, queued.id)
    assert (got.status, got.error, got.session_id) == ("failed", "boom", session.id)

    with pytest.raises(UsageError, match="'done'"):
        await store.record_request(t, session.id, status="done")
    with pytest.raises(UsageError, match="'running'"):
        await store.finish_request(t, queued.id, status="running")
    with pytest.raises(UsageError, match=f"request {queued.id!r} already exists"):
        await store.record_request(t, session.id, request_id=queued.id)


async def test_finishing_a_request_appends_its_turn_in_the_same_transaction(
    store: Store, tenant: Tenant
) -> None:
    t = tenant.id
    session = await store.create_session(t)
    await store.append_messages(t, session.id, None, [Message.user("before")])
    first, _ = await store.record_request(t, session.id)
    second, _ = await store.record_request(t, session.id)
    turn = [Message.user("hi"), Message.assistant("hello")]
    # The two finish at once: each turn lands whole, numbered after the other, no gaps.
    await asyncio.gather(
        store.finish_request(t, first.id, status="done", messages=turn),
        store.finish_request(t, second.id, status="done", messages=turn),
    )
    stored = await store.list_messages(t, session.id)
    assert [m.seq for m in stored] == [1, 2, 3, 4, 5]
    by_request = [m.request_id for m in stored[1:]]
    assert by_request in ([first.id] * 2 + [second.id] * 2, [second.id] * 2 + [first.id] * 2)
    assert [m.message.content for m in stored[1:]] == ["hi", "hello", "hi", "hello"]

    # A request that cannot finish (already finished) appends nothing: neither lands.
    with pytest.raises(StateError, match="is done"):
        await store.finish_request(t, first.id, status="done", messages=turn)
    assert (await store.get_session(t, session.id)).last_seq == 5
    # A message that cannot be stored fails the whole call before anything is written.
    third, _ = await store.record_request(t, session.id)
    with pytest.raises(UsageError, match=r"messages\[1\] is a str"):
        await store.finish_request(
            t,
            third.id,
            status="done",
            messages=[Message.user("ok"), "not a message"],  # type: ignore[list-item]
        )
    assert (await store.get_request(t, third.id)).status == "running"
    assert (await store.get_session(t, session.id)).last_seq == 5


async def test_an_idempotency_key_records_one_request(store: Store, tenant: Tenant) -> None:
    t = tenant.id
    session = await store.create_session(t)
    results = await asyncio.gather(
        *(
            store.record_request(t, session.id, request_id=f"r{i}", idempotency_key="retry-me")
            for i in range(20)
        )
    )
    winners = [record for record, created in results if created]
    assert len(winners) == 1
    assert {record.id for record, _ in results} == {winners[0].id}
    found = await store.find_request(t, "retry-me")
    assert found is not None
    assert found.id == winners[0].id
    assert await store.find_request(t, "never") is None


# -- versioned memory: optimistic writes --------------------------------------------------------


async def test_put_creates_then_needs_the_version_read(store: Store, tenant: Tenant) -> None:
    t = tenant.id
    made = await store.memory_put(t, W, "plan", {"steps": ["a"]}, if_version=None, writer="u1")
    assert (made.version, made.value, made.updated_by, made.kind) == (
        1,
        {"steps": ["a"]},
        "u1",
        "json",
    )
    with pytest.raises(VersionConflict) as caught:
        await store.memory_put(t, W, "plan", {"steps": []}, if_version=None, writer="u2")
    assert (caught.value.expected, caught.value.actual) == (None, 1)
    assert caught.value.current == made
    assert "already exists at version 1" in str(caught.value)

    changed = await store.memory_put(t, W, "plan", {"steps": ["a", "b"]}, if_version=1, writer="u2")
    assert changed.version == 2
    got = await store.memory_get(t, W, "plan")
    assert got == changed  # read-after-write returns the version the write reported
    assert got.updated_at.tzinfo is not None


async def test_of_two_writers_on_one_version_one_wins(store: Store, tenant: Tenant) -> None:
    t = tenant.id
    await store.memory_put(t, W, "doc", {"title": "draft"}, if_version=None, writer="setup")
    # Both read version 1, then both write at once.
    results = await asyncio.gather(
        store.memory_put(t, W, "doc", {"title": "agent's"}, if_version=1, writer="agent"),
        store.memory_put(t, W, "doc", {"title": "human's"}, if_version=1, writer="human"),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, MemoryRecord)]
    losses = [r for r in results if isinstance(r, VersionConflict)]
    assert len(wins) == 1
    assert len(losses) == 1
    win, loss = wins[0], losses[0]
    assert (loss.key, loss.expected, loss.actual) == ("doc", 1, 2)
    assert loss.current == win
    assert "is at version 2, not 1" in str(loss)
    assert await store.memory_get(t, W, "doc") == win
    # The loser re-reads and redoes its change on the winner's: nothing is lost.
    redo = {**win.value, "by": loss_writer(win)}  # type: ignore[dict-item]
    final = await store.memory_put(t, W, "doc", redo, if_version=loss.actual, writer="loser")
    assert final.version == 3
    assert final.value == redo


def loss_writer(win: MemoryRecord) -> str:
    return "human" if win.updated_by == "agent" else "agent"


async def test_a_stale_agent_write_never_overwrites_the_humans(
    store: Store, tenant: Tenant
) -> None:
    t = tenant.id
    await store.memory_put(t, W, "event", {"time": "09:00"}, if_version=None, writer="setup")
    read = await store.memory_get(t, W, "event")  # the agent reads v1 and plans...
    assert read is not None
    human = await store.memory_patch(
        t, W, "event", {"room": "B"}, if_version=read.version, writer="human"
    )
    with pytest.raises(VersionConflict) as caught:  # ... and writes on v1
        await store.memory_put(
            t, W, "event", {"time": "10:00"}, if_version=read.version, writer="agent"
        )
    assert caught.value.current == human
    assert (await store.memory_get(t, W, "event")) == human


async def test_only_one_of_many_concurrent_creates_succeeds(store: Store, tenant: Tenant) -> None:
    t = tenant.id
    results = await asyncio.gather(
        *(
            store.memory_put(t, W, "claim", f"worker-{i}", if_version=None, writer=f"w{i}")
            for i in range(10)
        ),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, MemoryRecord)]
    assert len(wins) == 1
    assert all(
        isinstance(r, VersionConflict) and r.current == wins[0] for r in results if r is not wins[0]
    )
    assert await store.memory_get(t, W, "claim") == wins[0]


async def test_merge_patch_follows_rfc_7386(store: Store, tenant: Tenant) -> None:
    t = tenant.id
    doc: dict[str, Any] = {
        "title": "Goodbye!",
        "author": {"given": "John", "family": "Doe"},
        "tags": ["a", "b"],
    }
    await store.memory_put(t, W, "doc", doc, if_version=None, writer="u")
    patch: dict[str, Any] = {
        "title": "Hello!",
        "phone": "+01-123",
        "author": {"family": None, "nick": "jd"},
        "tags": ["c"],
    }
    patched = await store.memory_patch(t, W, "doc", patch, if_version=1, writer="p")
    assert patched.version == 2
    assert patched.value == {
        "title": "Hello!",
        "author": {"given": "John", "nick": "jd"},
        "tags": ["c"],
        "phone": "+01-123",
    }
    removed = await store.memory_patch(t, W, "doc", {"author": None}, if_version=2, writer="p")
    assert "author" not in removed.value  # type: ignore[operator]
    with pytest.raises(VersionConflict) as caught:
        await store.memory_patch(t, W, "doc", {"x": 1}, if_version=2, writer="late")
    assert caught.value.actual == 3
    assert caught.value.current == removed
    with pytest.raises(VersionConflict) as caught:
        await store.memory_patch(t, W, "nothing", {"x": 1}, if_version=1, writer="p")
    assert caught.value.actual is None
    assert "does not exist" in str(caught.value)
    with pytest.raises(UsageError, match="merge patch must be a JSON object"):
        await store.memory_patch(t, W, "doc", ["x"], if_version=3, writer="p")  # type: ignore[arg-type]
    await store.memory_put(t, W, "note", "plain", if_version=None, writer="u", kind="text")
    with pytest.raises(UsageError, match="holds text"):
        await store.memory_patch(t, W, "note", {"a": 1}, if_version=1, writer="p")
    # A scalar target is replaced by an object patch.
    await store.memory_put(t, W, "n", 5, if_version=None, writer="u")
    assert (await store.memory_patch(t, W, "n", {"a": 1}, if_version=1, writer="p")).value == {
        "a": 1
    }


async def test_delete_needs_the_version_and_versions_never_repeat(
    store: Store, tenant: Tenant
) -> None:
    t = tenant.id
    await store.memory_put(t, W, "k", "v1", if_version=None, writer="u")
    await store.memory_put(t, W, "k", "v2", if_version=1, writer="u")
    with pytest.raises(VersionConflict) as caught:
        await store.memory_delete(t, W, "k", if_version=1, writer="stale")
    assert caught.value.actual == 2
    assert await store.memory_delete(t, W, "k", if_version=2, writer="u") == 3
    assert await store.memory_get(t, W, "k") is None
    assert await store.memory_list(t, W) == []
    with pytest.raises(VersionConflict) as caught:
        await store.memory_delete(t, W, "k", if_version=3, writer="u")
    assert caught.value.actual is None
    # Re-created, the key continues from the deletion: an old version can never match again.
    again = await store.memory_put(t, W, "k", "new", if_version=None, writer="u")
    assert again.version == 4
    for old in (1, 2, 3):
        with pytest.raises(VersionConflict):
            await store.memory_put(t, W, "k", "x", if_version=old, writer="stale")
    assert (await store.memory_get(t, W, "k")) == again


# -- versioned memory: commutative updates ------------------------------------------------------


async def test_fifty_concurrent_increments_add_fifty(store: Store, tenant: Tenant) -> None:
    t = tenant.id
    records = await asyncio.gather(
        *(store.memory_increment(t, W, "count", writer=f"agent-{i}") for i in range(50))
    )
    final = await store.memory_get(t, W, "count")
    assert final is not None
    assert final.value == 50
    assert final.version == 50
    assert sorted(r.value for r in records) == list(range(1, 51))  # type: ignore[type-var]
    assert sorted(r.version for r in records) == list(range(1, 51))


async def test_fifty_concurrent_appends_are_all_present(store: Store, tenant: Tenant) -> None:
    t = tenant.id
    await asyncio.gather(
        *(store.memory_append(t, W, "findings", {"from": i}, writer=f"a{i}") for i in range(50))
    )
    final = await store.memory_get(t, W, "findings")
    assert final is not None
    assert final.version == 50
    items: Any = final.value
    assert sorted(item["from"] for item in items) == list(range(50))


async def test_increments_and_appends_check_what_they_change(store: Store, tenant: Tenant) -> None:
    t = tenant.id
    assert (await store.memory_increment(t, W, "x", 2.5, writer="u")).value == 2.5
    assert (await store.memory_increment(t, W, "x", -1, writer="u")).value == 1.5
    assert (await store.memory_increment(t, W, "i", writer="u")).value == 1
    i2 = await store.memory_increment(t, W, "i", 10**12, writer="u")
    assert i2.value == 10**12 + 1
    assert isinstance(i2.value, int)
    await store.memory_put(t, W, "list", [1], if_version=None, writer="u")
    await store.memory_put(t, W, "flag", True, if_version=None, writer="u")
    with pytest.raises(UsageError, match="holds a list, not a number"):
        await store.memory_increment(t, W, "list", writer="u")
    with pytest.raises(UsageError, match="holds a bool, not a number"):
        await store.memory_increment(t, W, "flag", writer="u")
    with pytest.raises(UsageError, match="holds a int, not a list|holds a float, not a list"):
        await store.memory_append(t, W, "x", 1, writer="u")
    for bad in (True, math.inf, "1", None):
        with pytest.raises(UsageError, match="finite number"):
            await store.memory_increment(t, W, "i", bad, writer="u")  # type: ignore[arg-type]
    assert (await store.memory_append(t, W, "list", [2, 3], writer="u")).value == [1, [2, 3]]
    # After a delete, an append starts a new list and the version goes on.
    await store.memory_delete(t, W, "list", if_version=2, writer="u")
    fresh = await store.memory_append(t, W, "list", "a", writer="u")
    assert (fresh.value, fresh.version) == (["a"], 4)


# -- audit --------------------------------------------------------------------------------------


async def test_the_audit_log_is_a_strict_chain_per_key(store: Store, tenant: Tenant) -> None:
    t = tenant.id
    await store.memory_put(t, W, "doc", {"a": 1}, if_version=None, writer="creator")
    await asyncio.gather(
        *(
            store.memory_patch(t, W, "doc", {f"k{i}": i}, if_version=1, writer=f"p{i}")
            for i in range(5)
        ),
        return_exceptions=True,
    )
    await asyncio.gather(*(store.memory_increment(t, W, "n", writer=f"i{i}") for i in range(10)))
    await store.memory_put(t, W, "doc", {"b": 2}, if_version=2, writer="putter")
    await store.memory_delete(t, W, "doc", if_version=3, writer="deleter")
    await store.memory_put(t, W, "doc", "back", if_version=None, writer="reviver", kind="text")
    await store.memory_put(t, "agent:other", "doc", 1, if_version=None, writer="elsewhere")

    entries = await store.audit(t, scope=W, key="doc")
    assert [e.operation for e in entries] == ["create", "patch", "put", "delete", "create"]
    assert [e.writer for e in entries][2:] == ["putter", "deleter", "reviver"]
    assert entries[1].writer.startswith("p")
    assert [(e.base_version, e.new_version) for e in entries] == [
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 4),
        (4, 5),
    ]
    counts = await store.audit(t, scope=W, key="n")
    assert [(e.base_version, e.new_version) for e in counts] == [(i, i + 1) for i in range(10)]
    assert sorted(e.writer for e in counts) == sorted(f"i{i}" for i in range(10))
    assert len(await store.audit(t, scope=W)) == 15
    assert len(await store.audit(t)) == 16
    assert len(await store.audit(t, scope=W, limit=3)) == 3
    assert all(e.tenant_id == t and e.at.tzinfo for e in await store.audit(t))
    with pytest.raises(UsageError, match="needs the key's scope"):
        await store.audit(t, key="doc")


async def test_memory_values_round_trip_exactly(store: Store, tenant: Tenant) -> None:
    t = tenant.id
    values: list[Any] = [
        None,
        0,
        -(2**70),
        1.5,
        "",
        "ünïcødé ✓ \u0000 nul",
        [],
        {},
        {"nested": {"list": [1, "two", 3.0, None, True], "empty": {}}},
    ]
    for i, value in enumerate(values):
        made = await store.memory_put(t, W, f"v{i}", value, if_version=None, writer="u")
        got = await store.memory_get(t, W, f"v{i}")
        assert got == made
        assert got.value == value
        assert type(got.value) is type(value)
    as_text = await store.memory_put(
        t, W, "t", "some text", if_version=None, writer="u", kind="text"
    )
    assert as_text.kind == "text"
    assert (await store.memory_get(t, W, "t")) == as_text
    tupled = await store.memory_put(t, W, "tuple", (1, 2), if_version=None, writer="u")  # type: ignore[arg-type]
    assert tupled.value == [1, 2]
    listed = await store.memory_list(t, W)
    assert len(listed) == len(values) + 2
    for key in ("a_b", "B", "ab", "a"):  # listed by code point, whatever the database's locale
        await store.memory_put(t, "agent:order", key, 1, if_version=None, writer="u")
    assert [r.key for r in await store.memory_list(t, "agent:order")] == ["B", "a", "a_b", "ab"]


# -- argument checks ----------------------------------------------------------------------------


async def test_a_bad_scope_is_a_usage_error(store: Store, tenant: Tenant) -> None:
    for scope in [
        "team",
        "session:",
        "tenant:x",
        "workspace:a b",
        "agent:-x",
        "Session:x",
        "",
        None,
        5,
    ]:
        with pytest.raises(UsageError, match=r"memory scope .* is not valid: use 'session:<id>'"):
            await store.memory_put(tenant.id, scope, "k", 1, if_version=None, writer="u")  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="memory scope"):
            await store.memory_get(tenant.id, scope, "k")  # type: ignore[arg-type]


async def test_bad_arguments_are_usage_errors_naming_the_value(
    store: Store, tenant: Tenant
) -> None:
    t = tenant.id
    session = await store.create_session(t)
    store_: Any = store  # the calls below break the types on purpose
    cases: list[tuple[Any, str]] = [
        (store_.memory_get(t, W, ""), "memory key '' is not valid"),
        (store_.memory_get(t, W, "a b"), "memory key 'a b' is not valid"),
        (store_.memory_get(t, W, "x" * 201), "is not valid"),
        (store_.memory_put(t, W, "k", math.nan, if_version=None, writer="u"), "nan"),
        (store_.memory_put(t, W, "k", {1: "a"}, if_version=None, writer="u"), "key 1"),
        (store_.memory_put(t, W, "k", {"a": {1, 2}}, if_version=None, writer="u"), "is a set"),
        (store_.memory_put(t, W, "k", 1, if_version=0, writer="u"), "got 0"),
        (store_.memory_put(t, W, "k", 1, if_version=True, writer="u"), "got True"),
        (store_.memory_put(t, W, "k", 1, if_version="1", writer="u"), "got '1'"),
        (store_.memory_put(t, W, "k", 1, if_version=None, writer=""), "writer"),
        (store_.memory_put(t, W, "k", 1, if_version=None, writer="u", kind="text"), "'text'"),
        (store_.memory_put(t, W, "k", 1, if_version=None, writer="u", kind="xml"), "'xml'"),
        (store_.memory_put(t, W, "k", "x" * 1_000_001, if_version=None, writer="u"), "limit"),
        (store_.memory_patch(t, W, "k", {}, if_version=None, writer="u"), "got None"),
        (store_.memory_delete(t, W, "k", if_version=None, writer="u"), "got None"),
        (store_.create_session(t, session_id="bad id"), "session id 'bad id'"),
        (store_.create_session(t, metadata={"x": object()}), "is a object"),
        (store_.create_tenant(""), "tenant name"),
        (store_.append_messages(t, session.id, None, ["hi"]), "messages[0] is a str"),
        (store_.append_messages(t, session.id, "bad id", []), "request id 'bad id'"),
        (store_.list_messages(t, session.id, after_seq=-1), "after_seq"),
        (store_.list_sessions(t, limit=0), "limit"),
        (store_.audit(t, limit=-1), "limit"),
    ]
    for call, message in cases:
        with pytest.raises(UsageError) as caught:
            await call
        assert message in str(caught.value), (message, str(caught.value))
    assert await store.memory_list(t, W) == []  # nothing was written


async def test_a_closed_store_refuses_calls(store_url: str | None, tmp_path: Any) -> None:
    from tests.state.conftest import open_store

    store = await open_store(store_url)
    t = await store.create_tenant("acme")
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(ClosedError, match="closed"):
        await store.get_tenant(t.id)
    assert store.statistics().idle
