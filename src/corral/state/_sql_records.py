"""The SQL store's statements for tenants, API keys, sessions, messages and requests.

Each runs in the caller's transaction, which `SqlStore._tx` opens, reruns when locked, and maps
errors for.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from corral.errors import NotFound, UsageError
from corral.state import _keys, _rules
from corral.state._sql_memory import aware
from corral.state._tables import (
    api_keys,
    memory,
    memory_audit,
    messages,
    requests,
    sessions,
    tenants,
)
from corral.state.base import (
    ApiKeyRecord,
    RequestRecord,
    RequestStatus,
    SessionRecord,
    StoredMessage,
    Tenant,
)

__all__ = [
    "append",
    "create_api_key",
    "create_tenant",
    "create_session",
    "delete_session",
    "find_request",
    "list_messages",
    "list_sessions",
    "read_request",
    "read_session",
    "read_tenant",
    "record_request",
    "revoke_api_key",
    "tenant_for_key",
    "transition",
]


def create_tenant(conn: sa.Connection, insert: Any, tenant: Tenant) -> Tenant:
    """Insert a tenant; `UsageError` if its id is taken."""
    stmt = (
        insert(tenants)
        .values(id=tenant.id, name=tenant.name, created_at=tenant.created_at)
        .on_conflict_do_nothing()
        .returning(tenants.c.id)
    )
    if (conn.execute(stmt)).first() is None:
        raise UsageError(f"tenant {tenant.id!r} already exists")
    return tenant


def read_tenant(conn: sa.Connection, tenant_id: str) -> Tenant:
    """Return the tenant, or raise `NotFound`."""
    row = (conn.execute(sa.select(tenants).where(tenants.c.id == tenant_id))).first()
    if row is None:
        raise NotFound(f"no tenant {tenant_id!r}")
    return Tenant(row.id, row.name, aware(row.created_at))


def create_api_key(conn: sa.Connection, record: ApiKeyRecord, digest: str) -> None:
    """Insert an API key's record and hash (a missing tenant fails its foreign key)."""
    conn.execute(
        sa.insert(api_keys).values(
            id=record.id,
            tenant_id=record.tenant_id,
            name=record.name,
            key_hash=digest,
            created_at=record.created_at,
        )
    )


def tenant_for_key(conn: sa.Connection, key: str, key_id: str) -> Tenant | None:
    """Return the tenant of `key` if its hash matches and it is not revoked."""
    stmt = (
        sa.select(api_keys.c.key_hash, api_keys.c.revoked_at, tenants)
        .join(tenants, tenants.c.id == api_keys.c.tenant_id)
        .where(api_keys.c.id == key_id)
    )
    row = (conn.execute(stmt)).first()
    if row is None or not _keys.verify_key(key, row.key_hash) or row.revoked_at:
        return None
    return Tenant(row.id, row.name, aware(row.created_at))


def revoke_api_key(conn: sa.Connection, tenant_id: str, key_id: str) -> None:
    """Mark the tenant's key revoked (once); `NotFound` if the tenant has no such key."""
    mine = sa.and_(api_keys.c.id == key_id, api_keys.c.tenant_id == tenant_id)
    row = (conn.execute(sa.select(api_keys.c.revoked_at).where(mine))).first()
    if row is None:
        raise NotFound(f"no API key {key_id!r}")
    if row.revoked_at is None:
        conn.execute(sa.update(api_keys).where(mine).values(revoked_at=datetime.now(UTC)))


def _session_record(row: Any) -> SessionRecord:
    return SessionRecord(
        row.id, row.tenant_id, aware(row.created_at), _rules.decode_json(row.meta), row.last_seq
    )


def _request_record(row: Any) -> RequestRecord:
    return RequestRecord(
        row.id,
        row.tenant_id,
        row.session_id,
        row.status,
        row.error,
        row.idempotency_key,
        aware(row.created_at),
        None if row.finished_at is None else aware(row.finished_at),
    )


def create_session(
    conn: sa.Connection, insert: Any, record: SessionRecord, meta: str
) -> SessionRecord:
    """Insert a session; `UsageError` if the tenant already has one with its id."""
    params = {
        "tenant_id": record.tenant_id,
        "id": record.id,
        "meta": meta,
        "last_seq": 0,
        "created_at": record.created_at,
    }
    if (conn.execute(_insert_session(insert), params)).first() is None:
        raise UsageError(f"session {record.id!r} already exists")
    return record


def read_session(conn: sa.Connection, tenant_id: str, session_id: str) -> SessionRecord:
    """Return the session, or raise `NotFound`."""
    stmt = sa.select(sessions).where(sessions.c.tenant_id == tenant_id, sessions.c.id == session_id)
    row = (conn.execute(stmt)).first()
    if row is None:
        raise NotFound(f"no session {session_id!r}")
    return _session_record(row)


def list_sessions(
    conn: sa.Connection, tenant_id: str, limit: int | None, order_id: sa.ColumnElement[str]
) -> list[SessionRecord]:
    """Return the tenant's sessions, oldest first (ties by `order_id`)."""
    stmt = (
        sa.select(sessions)
        .where(sessions.c.tenant_id == tenant_id)
        .order_by(sessions.c.created_at, order_id)
        .limit(limit)
    )
    return [_session_record(row) for row in conn.execute(stmt)]


def delete_session(conn: sa.Connection, tenant_id: str, session_id: str) -> None:
    """Delete a session and all that is its own; `NotFound` if there is none."""
    stmt = (
        sa.delete(sessions)
        .where(sessions.c.tenant_id == tenant_id, sessions.c.id == session_id)
        .returning(sessions.c.id)
    )
    if (conn.execute(stmt)).first() is None:
        raise NotFound(f"no session {session_id!r}")
    # Messages and requests go by ON DELETE CASCADE; memory is keyed by scope, not session.
    scope = _rules.session_scope(session_id)
    for table in (memory, memory_audit):
        conn.execute(sa.delete(table).where(table.c.tenant_id == tenant_id, table.c.scope == scope))


def append(
    conn: sa.Connection,
    tenant_id: str,
    session_id: str,
    request_id: str | None,
    bodies: Sequence[str],
) -> list[int]:
    """Take the next `len(bodies)` numbers of the session and insert the messages under them.

    The counter UPDATE holds the session's row lock until the transaction ends: appends to one
    session take turns, and one that rolls back gives its numbers back.
    """
    params = {"b_tenant": tenant_id, "b_session": session_id, "b_count": len(bodies)}
    last = (conn.execute(_BUMP_SEQ, params)).scalar()
    if last is None:
        raise NotFound(f"no session {session_id!r}")
    first = last - len(bodies) + 1
    now = datetime.now(UTC)
    conn.execute(
        _INSERT_MESSAGES,
        [
            {
                "tenant_id": tenant_id,
                "session_id": session_id,
                "seq": first + i,
                "request_id": request_id,
                "body": body,
                "created_at": now,
            }
            for i, body in enumerate(bodies)
        ],
    )
    return list(range(first, last + 1))


def list_messages(
    conn: sa.Connection, tenant_id: str, session_id: str, after_seq: int, limit: int | None
) -> list[StoredMessage]:
    """Return the session's messages after `after_seq`; `NotFound` if there is no session."""
    read_session(conn, tenant_id, session_id)
    stmt = (
        sa.select(messages)
        .where(
            messages.c.tenant_id == tenant_id,
            messages.c.session_id == session_id,
            messages.c.seq > after_seq,
        )
        .order_by(messages.c.seq)
        .limit(limit)
    )
    return [
        StoredMessage(
            row.session_id,
            row.seq,
            row.request_id,
            _rules.decode_message(row.body),
            aware(row.created_at),
        )
        for row in conn.execute(stmt)
    ]


def record_request(
    conn: sa.Connection, insert: Any, record: RequestRecord
) -> tuple[RequestRecord, bool]:
    """Insert a request, or return the one already recorded with its idempotency key."""
    # DO NOTHING waits for a concurrent insert of the same key to commit, then yields to it.
    params = {
        "tenant_id": record.tenant_id,
        "id": record.id,
        "session_id": record.session_id,
        "status": record.status,
        "idempotency_key": record.idempotency_key,
        "created_at": record.created_at,
    }
    if (conn.execute(_insert_request(insert), params)).first() is not None:
        return record, True
    if record.idempotency_key is not None:
        existing = find_request(conn, record.tenant_id, record.idempotency_key)
        if existing is not None:
            return existing, False
    raise UsageError(f"request {record.id!r} already exists")


def transition(
    conn: sa.Connection,
    tenant_id: str,
    request_id: str,
    *,
    allowed: Sequence[RequestStatus],
    values: Mapping[str, Any],
    what: str,
) -> RequestRecord:
    """Update a request whose status is one of `allowed`, in one conditional UPDATE."""
    stmt = _update_request(tuple(allowed), tuple(values))
    params = {"b_tenant": tenant_id, "b_id": request_id}
    params.update({f"b_{name}": value for name, value in values.items()})
    row = (conn.execute(stmt, params)).first()
    if row is not None:
        return _request_record(row)
    mine = sa.and_(requests.c.tenant_id == tenant_id, requests.c.id == request_id)
    current = (conn.execute(sa.select(requests).where(mine))).first()
    if current is None:
        raise NotFound(f"no request {request_id!r}")
    raise _rules.bad_transition(request_id, current.status, allowed, what)


def read_request(conn: sa.Connection, tenant_id: str, request_id: str) -> RequestRecord:
    """Return the request, or raise `NotFound`."""
    stmt = sa.select(requests).where(requests.c.tenant_id == tenant_id, requests.c.id == request_id)
    row = (conn.execute(stmt)).first()
    if row is None:
        raise NotFound(f"no request {request_id!r}")
    return _request_record(row)


def find_request(conn: sa.Connection, tenant_id: str, idempotency_key: str) -> RequestRecord | None:
    """Return the tenant's request recorded with this idempotency key, if any."""
    stmt = sa.select(requests).where(
        requests.c.tenant_id == tenant_id, requests.c.idempotency_key == idempotency_key
    )
    row = (conn.execute(stmt)).first()
    return None if row is None else _request_record(row)


# The statements of a request's hot path, built once: building a statement (`.values(...)`,
# `.where(...)`) costs several times what executing it does on SQLite. Parameters are bound
# names; in UPDATEs they are prefixed `b_`, since a column's own name is reserved there.


@functools.cache
def _insert_session(insert: Any) -> Any:
    return insert(sessions).on_conflict_do_nothing().returning(sessions.c.id)


@functools.cache
def _insert_request(insert: Any) -> Any:
    return insert(requests).on_conflict_do_nothing().returning(requests.c.id)


@functools.cache
def _update_request(allowed: tuple[RequestStatus, ...], names: tuple[str, ...]) -> Any:
    return (
        sa.update(requests)
        .where(
            requests.c.tenant_id == sa.bindparam("b_tenant"),
            requests.c.id == sa.bindparam("b_id"),
            # One bind per status, not an "expanding" IN: the statement compiles once, whole.
            requests.c.status.in_([sa.literal(status) for status in allowed]),
        )
        .values({name: sa.bindparam(f"b_{name}") for name in names})
        .returning(requests)
    )


_BUMP_SEQ = (
    sa.update(sessions)
    .where(
        sessions.c.tenant_id == sa.bindparam("b_tenant"),
        sessions.c.id == sa.bindparam("b_session"),
    )
    .values(last_seq=sessions.c.last_seq + sa.bindparam("b_count"))
    .returning(sessions.c.last_seq)
)

_INSERT_MESSAGES = sa.insert(messages)
