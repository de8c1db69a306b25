"""The store interface: records, and the `Store` protocol every backend implements.

A store keeps what outlives one process: tenants and their API keys, sessions and their messages,
requests, and versioned shared memory with an audit log. Every method is scoped by `tenant_id`:
another tenant's record behaves exactly like a missing one.

Memory is keyed by (tenant, scope, key). A scope is a string naming who shares the memory:

- ``session:<id>``: one conversation's scratch space (deleted with the session);
- ``agent:<name>``: one agent's long-term memory, across sessions;
- ``workspace:<name>``: state shared by several agents and users.

Each memory record has a version that starts at 1 and grows by one with every write, deletes
included; versions of a key never repeat, so a version read once can never match a different
document later (no ABA). Overwrites are optimistic: they carry the version they were based on
and fail with `VersionConflict` when it is stale. Appends and increments are commutative, need no
version and never lose an update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from corral._types import JSONValue
from corral.messages import Message

__all__ = [
    "ApiKeyRecord",
    "AuditEntry",
    "MemoryKind",
    "MemoryOperation",
    "MemoryRecord",
    "RequestRecord",
    "RequestStatus",
    "SessionRecord",
    "Store",
    "StoreStatistics",
    "StoredMessage",
    "Tenant",
]

MemoryKind = Literal["json", "text"]
"""A memory value is any JSON value ("json") or a string ("text")."""

MemoryOperation = Literal["create", "put", "patch", "append", "increment", "delete"]

RequestStatus = Literal["queued", "running", "done", "failed", "cancelled"]
"""The statuses of `corral.agent`'s requests; "done", "failed" and "cancelled" are final."""


@dataclass(frozen=True, slots=True)
class Tenant:
    """An account: everything in a store belongs to exactly one tenant."""

    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """What a store keeps of an API key: never the key itself, only its hash.

    `id` is the key's public prefix (``crl_<id>_<secret>``), safe to show and log.
    """

    id: str
    tenant_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A conversation. `last_seq` is the sequence number of its newest message (0: none)."""

    id: str
    tenant_id: str
    created_at: datetime
    metadata: Mapping[str, JSONValue]
    last_seq: int = 0


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message of a session, with its place: `seq` runs 1, 2, 3, ... without gaps."""

    session_id: str
    seq: int
    request_id: str | None
    message: Message
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request of a session: its status, and the idempotency key it was submitted with."""

    id: str
    tenant_id: str
    session_id: str
    status: RequestStatus
    error: str | None
    idempotency_key: str | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class MemoryRecord:
    """One memory value, its version, and who wrote it last."""

    tenant_id: str
    scope: str
    key: str
    kind: MemoryKind
    value: JSONValue
    version: int
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One write to memory: who, what, and the version it turned into which.

    `base_version` is the version the write replaced (0: the key had never existed); for one key
    the entries form a strict chain: each entry's `base_version` is the previous `new_version`.
    """

    tenant_id: str
    scope: str
    key: str
    writer: str
    operation: MemoryOperation
    base_version: int
    new_version: int
    at: datetime


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """What a store holds right now: operations in flight and pooled connections in use."""

    name: str
    in_flight: int
    """Store calls that have started and not returned."""
    checked_out: int = 0
    """Database connections lent out by the pool."""
    pool_size: int = 0
    overflow: int = 0
    """Connections open beyond `pool_size` (negative: pool slots not opened yet)."""

    @property
    def idle(self) -> bool:
        """Whether no call runs and no connection is lent out."""
        return self.in_flight == 0 and self.checked_out == 0


class Store(Protocol):
    """Persistence for the server: tenants, sessions, messages, requests, versioned memory.

    Implementations are safe to call from many tasks at once on one event loop; the SQL store is
    also safe across processes sharing a database. Every call is atomic: it happens entirely or
    not at all, and a cancelled call leaves nothing half-written. A cancelled call may or may not
    have happened: PostgreSQL interrupts it (rolled back, unless it was committing); SQLite lets
    a started call finish its short transaction before the cancellation takes effect.

    Errors: `NotFound` for a missing (or another tenant's) record, `VersionConflict` for a stale
    version, `UsageError` for a malformed argument (naming it), `ClosedError` after `aclose()`,
    and `StateError` when the database itself fails.
    """

    # -- tenants and API keys -------------------------------------------------------------------

    async def create_tenant(self, name: str, *, tenant_id: str | None = None) -> Tenant:
        """Create a tenant; `tenant_id` defaults to a fresh random id."""
        ...

    async def get_tenant(self, tenant_id: str) -> Tenant:
        """Return the tenant, or raise `NotFound`."""
        ...

    async def create_api_key(self, tenant_id: str, *, name: str = "") -> tuple[str, ApiKeyRecord]:
        """Create an API key for the tenant; return the key (shown once) and its record.

        Only a SHA-256 hash of the key is stored: the plaintext cannot be read back.
        """
        ...

    async def tenant_for_key(self, key: str) -> Tenant | None:
        """Return the tenant an API key belongs to, or None (unknown, malformed or revoked).

        The key's hash is compared in constant time.
        """
        ...

    async def revoke_api_key(self, tenant_id: str, key_id: str) -> None:
        """Revoke a key by its id (public prefix); idempotent. Raises `NotFound`."""
        ...

    # -- sessions and messages ------------------------------------------------------------------

    async def create_session(
        self,
        tenant_id: str,
        *,
        session_id: str | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
    ) -> SessionRecord:
        """Create a session; `session_id` defaults to a fresh random id.

        Raises:
            UsageError: the tenant already has a session with this id.
            NotFound: no such tenant.
        """
        ...

    async def get_session(self, tenant_id: str, session_id: str) -> SessionRecord:
        """Return the session, or raise `NotFound`."""
        ...

    async def list_sessions(
        self, tenant_id: str, *, limit: int | None = None
    ) -> list[SessionRecord]:
        """Return the tenant's sessions, oldest first."""
        ...

    async def delete_session(self, tenant_id: str, session_id: str) -> None:
        """Delete a session with its messages, requests and ``session:<id>`` memory.

        Raises `NotFound`.
        """
        ...

    async def append_messages(
        self,
        tenant_id: str,
        session_id: str,
        request_id: str | None,
        messages: Sequence[Message],
    ) -> list[int]:
        """Append messages to a session at once; return their sequence numbers.

        Concurrent appends to one session never interleave, lose or duplicate a message: each
        call gets the next consecutive run of numbers, and the session's numbers stay 1..N
        without gaps (a failed or cancelled append takes no number).
        """
        ...

    async def list_messages(
        self, tenant_id: str, session_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[StoredMessage]:
        """Return the session's messages with `seq > after_seq`, in order. Raises `NotFound`."""
        ...

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
        """Record a new request; return it and True, or the existing one and False.

        With an `idempotency_key` the tenant already used, nothing is created and the request
        first recorded with it is returned: of two concurrent calls with one key, exactly one
        creates.

        Raises:
            NotFound: no such session.
            UsageError: `request_id` is taken, or `status` is not "queued" or "running".
        """
        ...

    async def start_request(self, tenant_id: str, request_id: str) -> RequestRecord:
        """Move a queued request to "running". Raises `NotFound`, or `StateError` if not queued."""
        ...

    async def finish_request(
        self,
        tenant_id: str,
        request_id: str,
        *,
        status: RequestStatus,
        error: str | None = None,
        messages: Sequence[Message] = (),
    ) -> RequestRecord:
        """Give a request its final status ("done", "failed", "cancelled") and finish time.

        `messages` (the request's turn) are appended to its session in the same transaction,
        as `append_messages` would: the turn and the final status land together, or neither.

        Raises:
            NotFound: no such request.
            StateError: the request had already finished (its status is not changed twice).
        """
        ...

    async def get_request(self, tenant_id: str, request_id: str) -> RequestRecord:
        """Return the request, or raise `NotFound`."""
        ...

    async def find_request(self, tenant_id: str, idempotency_key: str) -> RequestRecord | None:
        """Return the tenant's request recorded with this idempotency key, if any."""
        ...

    # -- versioned memory -----------------------------------------------------------------------

    async def memory_get(self, tenant_id: str, scope: str, key: str) -> MemoryRecord | None:
        """Return the record, or None if the key does not exist (or was deleted)."""
        ...

    async def memory_list(self, tenant_id: str, scope: str) -> list[MemoryRecord]:
        """Return the live records of a scope, by key."""
        ...

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
        """Write a value if the key is at `if_version`; return the new record.

        `if_version` is the version the writer read, or None to create the key (only if it does
        not exist): there is no unconditional overwrite. `writer` names who writes (an agent, a
        user, a request id) for the audit log. `kind` is "json" (any JSON value) or "text" (a
        string).

        Raises:
            VersionConflict: the key is at another version (or exists, when creating); it
                carries the current record. Nothing was written.
        """
        ...

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
        """Apply an RFC 7386 JSON merge patch to a "json" value at `if_version`.

        `null` in the patch deletes a member; objects merge recursively; anything else replaces.

        Raises:
            VersionConflict: the key is at another version, or does not exist.
        """
        ...

    async def memory_append(
        self, tenant_id: str, scope: str, key: str, item: JSONValue, *, writer: str
    ) -> MemoryRecord:
        """Append `item` to the list at `key` (created as ``[item]`` if absent).

        No version is needed: concurrent appends all land, in some order.

        Raises:
            UsageError: the value at `key` is not a list.
        """
        ...

    async def memory_increment(
        self, tenant_id: str, scope: str, key: str, by: int | float = 1, *, writer: str
    ) -> MemoryRecord:
        """Add `by` to the number at `key` (created as `by` if absent).

        No version is needed: N concurrent increments of 1 add exactly N.

        Raises:
            UsageError: the value at `key` is not a number.
        """
        ...

    async def memory_delete(
        self, tenant_id: str, scope: str, key: str, *, if_version: int, writer: str
    ) -> int:
        """Delete the key if it is at `if_version`; return the deletion's version.

        The key's version survives the delete: re-creating it continues from there.

        Raises:
            VersionConflict: the key is at another version, or does not exist.
        """
        ...

    async def audit(
        self,
        tenant_id: str,
        *,
        scope: str | None = None,
        key: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """Return memory writes, oldest first, optionally of one scope (and key)."""
        ...

    # -- lifecycle ------------------------------------------------------------------------------

    def statistics(self) -> StoreStatistics:
        """Return calls in flight and connections in use."""
        ...

    async def aclose(self) -> None:
        """Wait for calls in flight, then release connections. Idempotent."""
        ...
