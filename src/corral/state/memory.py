"""`MemoryStore`: the in-memory store, the fake beside the interface.

It keeps everything in dicts for the life of the process. Every call runs its check-and-write
with no `await` in between, which is what makes it atomic under asyncio: each call yields to
the loop once on entry (where a database round trip would), then runs to completion. Not
thread-safe: use it from one event loop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from corral._types import AsyncResource, JSONValue
from corral.errors import NotFound, UsageError
from corral.messages import Message
from corral.state import _keys, _rules
from corral.state._lifecycle import Lifecycle
from corral.state.base import (
    ApiKeyRecord,
    AuditEntry,
    MemoryKind,
    MemoryOperation,
    MemoryRecord,
    RequestRecord,
    RequestStatus,
    SessionRecord,
    StoredMessage,
    StoreStatistics,
    Tenant,
)

__all__ = ["MemoryStore"]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Row:
    kind: MemoryKind
    text: str | None
    """The encoded value; None once deleted (the row stays, so versions never repeat)."""
    version: int
    updated_at: datetime
    updated_by: str


@dataclass(slots=True)
class _Session:
    record: SessionRecord
    messages: list[tuple[int, str | None, str, datetime]] = field(default_factory=list)


class MemoryStore(AsyncResource):
    """A `Store` held in memory: for tests, demos and single-process servers without a database.

    Values are stored encoded, as the SQL store stores them, so a read returns a fresh copy and
    both stores accept and return exactly the same values.
    """

    def __init__(self) -> None:
        self._life = Lifecycle("the memory store")
        self._tenants: dict[str, Tenant] = {}
        self._keys: dict[str, tuple[ApiKeyRecord, str]] = {}
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._requests: dict[tuple[str, str], RequestRecord] = {}
        self._idempotency: dict[tuple[str, str], str] = {}
        self._memory: dict[tuple[str, str, str], _Row] = {}
        self._audit: list[AuditEntry] = []

    @asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        self._life.enter()
        try:
            # Where a database would be awaited: other tasks run here, never inside the
            # check-and-write that follows.
            await asyncio.sleep(0)
            yield
        finally:
            self._life.exit()

    # -- tenants and API keys -------------------------------------------------------------------

    async def create_tenant(self, name: str, *, tenant_id: str | None = None) -> Tenant:
        """Create a tenant; `tenant_id` defaults to a fresh random id."""
        name = _rules.check_text(name, "tenant name")
        tenant_id = _rules.check_id(tenant_id or uuid.uuid4().hex, "tenant id")
        async with self._call():
            if tenant_id in self._tenants:
                raise UsageError(f"tenant {tenant_id!r} already exists")
            tenant = self._tenants[tenant_id] = Tenant(tenant_id, name, _now())
            return tenant

    async def get_tenant(self, tenant_id: str) -> Tenant:
        """Return the tenant, or raise `NotFound`."""
        async with self._call():
            return self._tenant(tenant_id)

    def _tenant(self, tenant_id: str) -> Tenant:
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            raise NotFound(f"no tenant {tenant_id!r}")
        return tenant

    async def create_api_key(self, tenant_id: str, *, name: str = "") -> tuple[str, ApiKeyRecord]:
        """Create an API key; return the key (shown once) and its record (no plaintext kept)."""
        name = _rules.check_text(name, "API key name", empty=True)
        async with self._call():
            self._tenant(tenant_id)
            key, key_id, digest = _keys.new_key()
            record = ApiKeyRecord(key_id, tenant_id, name, _now())
            self._keys[key_id] = (record, digest)
            return key, record

    async def tenant_for_key(self, key: str) -> Tenant | None:
        """Return the tenant of a valid, unrevoked key, or None."""
        key_id = _keys.parse_key(key)
        async with self._call():
            found = self._keys.get(key_id) if key_id is not None else None
            if found is None:
                return None
            record, digest = found
            if not _keys.verify_key(key, digest) or record.revoked_at is not None:
                return None
            return self._tenants.get(record.tenant_id)

    async def revoke_api_key(self, tenant_id: str, key_id: str) -> None:
        """Revoke a key by its id; idempotent. Raises `NotFound`."""
        async with self._call():
            found = self._keys.get(key_id)
            if found is None or found[0].tenant_id != tenant_id:
                raise NotFound(f"no API key {key_id!r}")
            record, digest = found
            if record.revoked_at is None:
                self._keys[key_id] = (replace(record, revoked_at=_now()), digest)

    # -- sessions and messages ------------------------------------------------------------------

    async def create_session(
        self,
        tenant_id: str,
        *,
        session_id: str | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
    ) -> SessionRecord:
        """Create a session; `session_id` defaults to a fresh random id."""
        session_id = _rules.check_id(session_id or uuid.uuid4().hex, "session id")
        meta = _rules.decode_json(_rules.encode_json(dict(metadata or {}), "session metadata"))
        async with self._call():
            self._tenant(tenant_id)
            if (tenant_id, session_id) in self._sessions:
                raise UsageError(f"session {session_id!r} already exists")
            record = SessionRecord(session_id, tenant_id, _now(), meta)
            self._sessions[tenant_id, session_id] = _Session(record)
            return record

    def _session(self, tenant_id: str, session_id: str) -> _Session:
        session = self._sessions.get((tenant_id, session_id))
        if session is None:
            raise NotFound(f"no session {session_id!r}")
        return session

    async def get_session(self, tenant_id: str, session_id: str) -> SessionRecord:
        """Return the session, or raise `NotFound`."""
        async with self._call():
            return self._session(tenant_id, session_id).record

    async def list_sessions(
        self, tenant_id: str, *, limit: int | None = None
    ) -> list[SessionRecord]:
        """Return the tenant's sessions, oldest first."""
        limit = _rules.check_limit(limit)
        async with self._call():
            found = [s.record for (t, _), s in self._sessions.items() if t == tenant_id]
            found.sort(key=lambda r: (r.created_at, r.id))
            return found[:limit]

    async def delete_session(self, tenant_id: str, session_id: str) -> None:
        """Delete a session with its messages, requests and session-scoped memory."""
        async with self._call():
            self._session(tenant_id, session_id)
            del self._sessions[tenant_id, session_id]
            for rid in [
                r
                for (t, r), req in self._requests.items()
                if t == tenant_id and req.session_id == session_id
            ]:
                record = self._requests.pop((tenant_id, rid))
                if record.idempotency_key is not None:
                    del self._idempotency[tenant_id, record.idempotency_key]
            scope = _rules.session_scope(session_id)
            for mkey in [k for k in self._memory if k[0] == tenant_id and k[1] == scope]:
                del self._memory[mkey]
            self._audit = [
                a for a in self._audit if not (a.tenant_id == tenant_id and a.scope == scope)
            ]

    async def append_messages(
        self,
        tenant_id: str,
        session_id: str,
        request_id: str | None,
        messages: Sequence[Message],
    ) -> list[int]:
        """Append messages at once; return their gap-free sequence numbers."""
        if request_id is not None:
            _rules.check_id(request_id, "request id")
        encoded = [_rules.encode_message(m, i) for i, m in enumerate(messages)]
        async with self._call():
            return self._append(tenant_id, session_id, request_id, encoded)

    def _append(
        self, tenant_id: str, session_id: str, request_id: str | None, encoded: list[str]
    ) -> list[int]:
        session = self._session(tenant_id, session_id)
        first = session.record.last_seq + 1
        now = _now()
        session.messages.extend(
            (first + i, request_id, text, now) for i, text in enumerate(encoded)
        )
        last = first + len(encoded) - 1
        session.record = replace(session.record, last_seq=last)
        return list(range(first, last + 1))

    async def list_messages(
        self, tenant_id: str, session_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[StoredMessage]:
        """Return the session's messages with `seq > after_seq`, in order."""
        after_seq = _rules.check_after_seq(after_seq)
        limit = _rules.check_limit(limit)
        async with self._call():
            session = self._session(tenant_id, session_id)
            # seq is the position + 1, so the slice starts right after `after_seq`.
            rows = session.messages[after_seq:]
            return [
                StoredMessage(session_id, seq, rid, _rules.decode_message(text), at)
                for seq, rid, text, at in rows[:limit]
            ]

    # -- requests -------------------------------------------------------------------------------

    async def record_request(
        self,
        tenant_id: str,
        session_id: str,
        *,
        request_id: str | None = None,
        idempotency_key: str | None = None,
        status: RequestStatus = "running",
    ) -> tuple[RequestRecord, bool]:
        """Record a new request, or return the one recorded with the same idempotency key."""
        request_id = _rules.check_id(request_id or uuid.uuid4().hex, "request id")
        if idempotency_key is not None:
            _rules.check_text(idempotency_key, "idempotency key")
        status = _rules.check_new_status(status)
        async with self._call():
            self._session(tenant_id, session_id)
            if idempotency_key is not None:
                existing = self._idempotency.get((tenant_id, idempotency_key))
                if existing is not None:
                    return self._requests[tenant_id, existing], False
            if (tenant_id, request_id) in self._requests:
                raise UsageError(f"request {request_id!r} already exists")
            record = RequestRecord(
                request_id, tenant_id, session_id, status, None, idempotency_key, _now(), None
            )
            self._requests[tenant_id, request_id] = record
            if idempotency_key is not None:
                self._idempotency[tenant_id, idempotency_key] = request_id
            return record, True

    def _request(self, tenant_id: str, request_id: str) -> RequestRecord:
        record = self._requests.get((tenant_id, request_id))
        if record is None:
            raise NotFound(f"no request {request_id!r}")
        return record

    async def start_request(self, tenant_id: str, request_id: str) -> RequestRecord:
        """Move a queued request to "running"."""
        async with self._call():
            record = self._request(tenant_id, request_id)
            if record.status != "queued":
                raise _rules.bad_transition(request_id, record.status, ("queued",), "started")
            record = self._requests[tenant_id, request_id] = replace(record, status="running")
            return record

    async def finish_request(
        self,
        tenant_id: str,
        request_id: str,
        *,
        status: RequestStatus,
        error: str | None = None,
        messages: Sequence[Message] = (),
    ) -> RequestRecord:
        """Give a request its final status and finish time, and append its turn's messages."""
        status = _rules.check_final_status(status, error)
        encoded = [_rules.encode_message(m, i) for i, m in enumerate(messages)]
        async with self._call():
            record = self._request(tenant_id, request_id)
            if record.status in _rules.FINAL_STATUSES:
                raise _rules.bad_transition(
                    request_id, record.status, ("queued", "running"), "finished"
                )
            if encoded:
                self._append(tenant_id, record.session_id, request_id, encoded)
            record = replace(record, status=status, error=error, finished_at=_now())
            self._requests[tenant_id, request_id] = record
            return record

    async def get_request(self, tenant_id: str, request_id: str) -> RequestRecord:
        """Return the request, or raise `NotFound`."""
        async with self._call():
            return self._request(tenant_id, request_id)

    async def find_request(self, tenant_id: str, idempotency_key: str) -> RequestRecord | None:
        """Return the request recorded with this idempotency key, if any."""
        async with self._call():
            request_id = self._idempotency.get((tenant_id, idempotency_key))
            return None if request_id is None else self._requests[tenant_id, request_id]

    # -- versioned memory -----------------------------------------------------------------------

    def _live(self, tenant_id: str, scope: str, key: str) -> MemoryRecord | None:
        row = self._memory.get((tenant_id, scope, key))
        if row is None or row.text is None:
            return None
        return MemoryRecord(
            tenant_id,
            scope,
            key,
            row.kind,
            _rules.decode_json(row.text),
            row.version,
            row.updated_at,
            row.updated_by,
        )

    def _write(
        self,
        tenant_id: str,
        scope: str,
        key: str,
        *,
        kind: MemoryKind,
        text: str | None,
        writer: str,
        operation: MemoryOperation,
    ) -> int:
        """Store the next version of a key and its audit entry, together; return the version."""
        self._tenant(tenant_id)
        row = self._memory.get((tenant_id, scope, key))
        base = 0 if row is None else row.version
        now = _now()
        self._memory[tenant_id, scope, key] = _Row(kind, text, base + 1, now, writer)
        self._audit.append(
            AuditEntry(tenant_id, scope, key, writer, operation, base, base + 1, now)
        )
        return base + 1

    async def memory_get(self, tenant_id: str, scope: str, key: str) -> MemoryRecord | None:
        """Return the record, or None if the key does not exist."""
        _rules.check_scope(scope)
        _rules.check_key(key)
        async with self._call():
            return self._live(tenant_id, scope, key)

    async def memory_list(self, tenant_id: str, scope: str) -> list[MemoryRecord]:
        """Return the live records of a scope, by key."""
        _rules.check_scope(scope)
        async with self._call():
            keys = sorted(k for t, s, k in self._memory if t == tenant_id and s == scope)
            return [r for k in keys if (r := self._live(tenant_id, scope, k)) is not None]

    async def memory_put(
        self,
        tenant_id: str,
        scope: str,
        key: str,
        value: JSONValue,
        *,
        if_version: int | None,
        writer: str,
        kind: MemoryKind = "json",
    ) -> MemoryRecord:
        """Write a value if the key is at `if_version` (None: create it)."""
        expected, writer = _rules.check_versioned_write(
            scope, key, if_version, writer, create_allowed=True
        )
        kind = _rules.check_kind(kind, value)
        text = _rules.encode_json(value, f"the value of memory key {key!r}")
        async with self._call():
            current = self._live(tenant_id, scope, key)
            if (current.version if current else None) != expected:
                raise _rules.conflict(scope, key, expected=expected, current=current)
            operation: MemoryOperation = "create" if current is None else "put"
            self._write(
                tenant_id, scope, key, kind=kind, text=text, writer=writer, operation=operation
            )
            return self._require(tenant_id, scope, key)

    def _require(self, tenant_id: str, scope: str, key: str) -> MemoryRecord:
        record = self._live(tenant_id, scope, key)
        assert record is not None  # just written, with no await since
        return record

    async def memory_patch(
        self,
        tenant_id: str,
        scope: str,
        key: str,
        patch: Mapping[str, JSONValue],
        *,
        if_version: int,
        writer: str,
    ) -> MemoryRecord:
        """Apply an RFC 7386 merge patch to a "json" value at `if_version`."""
        expected, writer = _rules.check_versioned_write(
            scope, key, if_version, writer, create_allowed=False
        )
        patch = _rules.check_patch(patch)
        _rules.encode_json(dict(patch), f"the patch of memory key {key!r}")
        async with self._call():
            current = self._live(tenant_id, scope, key)
            if current is None or current.version != expected:
                raise _rules.conflict(scope, key, expected=expected, current=current)
            value = _rules.patched(current, patch)
            text = _rules.encode_json(value, f"the value of memory key {key!r}")
            self._write(
                tenant_id, scope, key, kind="json", text=text, writer=writer, operation="patch"
            )
            return self._require(tenant_id, scope, key)

    async def memory_append(
        self, tenant_id: str, scope: str, key: str, item: JSONValue, *, writer: str
    ) -> MemoryRecord:
        """Append `item` to the list at `key` (created if absent); never loses an append."""
        writer = _rules.check_write(scope, key, writer)
        _rules.encode_json(item, f"the item appended to memory key {key!r}")
        async with self._call():
            value = _rules.appended(self._live(tenant_id, scope, key), item)
            text = _rules.encode_json(value, f"the value of memory key {key!r}")
            self._write(
                tenant_id, scope, key, kind="json", text=text, writer=writer, operation="append"
            )
            return self._require(tenant_id, scope, key)

    async def memory_increment(
        self, tenant_id: str, scope: str, key: str, by: int | float = 1, *, writer: str
    ) -> MemoryRecord:
        """Add `by` to the number at `key` (created if absent); never loses an increment."""
        writer = _rules.check_write(scope, key, writer)
        by = _rules.check_number(by)
        async with self._call():
            value = _rules.incremented(self._live(tenant_id, scope, key), by)
            text = _rules.encode_json(value, f"the value of memory key {key!r}")
            self._write(
                tenant_id, scope, key, kind="json", text=text, writer=writer, operation="increment"
            )
            return self._require(tenant_id, scope, key)

    async def memory_delete(
        self, tenant_id: str, scope: str, key: str, *, if_version: int, writer: str
    ) -> int:
        """Delete the key if it is at `if_version`; return the deletion's version."""
        expected, writer = _rules.check_versioned_write(
            scope, key, if_version, writer, create_allowed=False
        )
        async with self._call():
            current = self._live(tenant_id, scope, key)
            if current is None or current.version != expected:
                raise _rules.conflict(scope, key, expected=expected, current=current)
            return self._write(
                tenant_id,
                scope,
                key,
                kind=current.kind,
                text=None,
                writer=writer,
                operation="delete",
            )

    async def audit(
        self,
        tenant_id: str,
        *,
        scope: str | None = None,
        key: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Return memory writes, oldest first."""
        if scope is not None:
            _rules.check_scope(scope)
        if key is not None:
            _rules.check_key(key)
            if scope is None:
                raise UsageError("audit(key=...) needs the key's scope too")
        limit = _rules.check_limit(limit)
        async with self._call():
            found = [
                a
                for a in self._audit
                if a.tenant_id == tenant_id
                and (scope is None or a.scope == scope)
                and (key is None or a.key == key)
            ]
            return found[:limit]

    # -- lifecycle ------------------------------------------------------------------------------

    def statistics(self) -> StoreStatistics:
        """Return calls in flight (there is no pool)."""
        return StoreStatistics(name="memory", in_flight=self._life.in_flight)

    async def aclose(self) -> None:
        """Stop taking calls and wait for those in flight. Idempotent; the data is dropped."""
        if not self._life.start_close():
            await self._life.wait_closed()
            return
        try:
            await self._life.wait_idle()
        finally:
            self._life.closed()
