"""The versioned-memory statements of the SQL store, each run inside the caller's transaction.

How each write stays correct with many writers, on both databases:

- Overwrites (put, patch, delete) are optimistic: ``UPDATE ... SET version = version + 1 WHERE
  <key> AND version = :expected``, and a write that updates no row is a `VersionConflict`. Two
  writers from one version cannot both succeed: on PostgreSQL the second UPDATE waits for the
  first's row lock, then re-checks its WHERE against the new row and matches nothing; on SQLite
  write transactions run one at a time (BEGIN IMMEDIATE). Never ``ON CONFLICT DO UPDATE``: that
  is last-writer-wins.
- Creates insert with ``ON CONFLICT DO NOTHING``, which waits for a concurrent inserter of the
  same key; losing that race is a `VersionConflict`, never an overwrite.
- Appends and increments read the row ``FOR UPDATE`` (PostgreSQL; SQLite's transaction already
  holds the write lock), compute the new value in Python and write it in the same transaction:
  concurrent ones queue on the row lock, so none is lost and none needs a retry. The UPDATE
  still checks the version it read, as a guard.

Every write inserts its audit entry in the same transaction, so the log and the data never
disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from corral._types import JSONValue
from corral.errors import StateError
from corral.state import _rules
from corral.state._tables import memory, memory_audit
from corral.state.base import AuditEntry, MemoryKind, MemoryOperation, MemoryRecord

__all__ = ["MemoryStatements", "audit_entry", "aware", "list_scope", "read_audit"]

# How often a create or an append re-reads after a concurrent delete removed the row it saw;
# only deleting the key's whole session does that.
_ATTEMPTS = 3


def aware(when: datetime) -> datetime:
    """Return `when` in UTC (SQLite returns naive datetimes; they were stored as UTC)."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _record(row: Any) -> MemoryRecord:
    return MemoryRecord(
        tenant_id=row.tenant_id,
        scope=row.scope,
        key=row.key,
        kind=row.kind,
        value=_rules.decode_json(row.value),
        version=row.version,
        updated_at=aware(row.updated_at),
        updated_by=row.updated_by,
    )


def audit_entry(row: Any) -> AuditEntry:
    """Return the audit entry of a `memory_audit` row."""
    return AuditEntry(
        tenant_id=row.tenant_id,
        scope=row.scope,
        key=row.key,
        writer=row.writer,
        operation=row.operation,
        base_version=row.base_version,
        new_version=row.new_version,
        at=aware(row.at),
    )


def list_scope(
    conn: sa.Connection, tenant_id: str, scope: str, order: sa.ColumnElement[str]
) -> list[MemoryRecord]:
    """Return the live records of a scope, ordered by `order` (the key)."""
    stmt = (
        sa.select(memory)
        .where(
            memory.c.tenant_id == tenant_id,
            memory.c.scope == scope,
            memory.c.value.is_not(None),
        )
        .order_by(order)
    )
    return [_record(row) for row in conn.execute(stmt)]


def read_audit(
    conn: sa.Connection, where: list[sa.ColumnElement[bool]], limit: int | None
) -> list[AuditEntry]:
    """Return the audit entries matching `where`, oldest first."""
    stmt = sa.select(memory_audit).where(*where).order_by(memory_audit.c.id).limit(limit)
    return [audit_entry(row) for row in conn.execute(stmt)]


class MemoryStatements:
    """The memory operations of one key, for the dialect's INSERT ... ON CONFLICT DO NOTHING."""

    __slots__ = ("_insert", "conn", "key", "scope", "tenant_id")

    def __init__(
        self,
        conn: sa.Connection,
        insert: Any,
        tenant_id: str,
        scope: str,
        key: str,
    ) -> None:
        self.conn = conn
        self._insert = insert
        self.tenant_id = tenant_id
        self.scope = scope
        self.key = key

    def _where(self) -> sa.ColumnElement[bool]:
        return sa.and_(
            memory.c.tenant_id == self.tenant_id,
            memory.c.scope == self.scope,
            memory.c.key == self.key,
        )

    def row(self, *, lock: bool = False) -> Any:
        """Return the key's row, tombstone included, or None; `lock` holds it to commit."""
        stmt = sa.select(memory).where(self._where())
        if lock:
            stmt = stmt.with_for_update()  # rendered on PostgreSQL; SQLite holds the db lock
        return (self.conn.execute(stmt)).first()

    def live(self, *, lock: bool = False) -> MemoryRecord | None:
        """Return the key's record, or None if it does not exist or was deleted."""
        row = self.row(lock=lock)
        return None if row is None or row.value is None else _record(row)

    def _audit(
        self, writer: str, operation: MemoryOperation, base: int, new: int, now: datetime
    ) -> None:
        self.conn.execute(
            sa.insert(memory_audit).values(
                tenant_id=self.tenant_id,
                scope=self.scope,
                key=self.key,
                writer=writer,
                operation=operation,
                base_version=base,
                new_version=new,
                at=now,
            )
        )

    def _insert_new(self, kind: MemoryKind, text: str, writer: str, now: datetime) -> bool:
        stmt = (
            self._insert(memory)
            .values(
                tenant_id=self.tenant_id,
                scope=self.scope,
                key=self.key,
                kind=kind,
                value=text,
                version=1,
                updated_at=now,
                updated_by=writer,
            )
            .on_conflict_do_nothing()
            .returning(memory.c.version)
        )
        return (self.conn.execute(stmt)).first() is not None

    def _update(
        self,
        *,
        expected: int,
        kind: MemoryKind | None,
        text: str | None,
        writer: str,
        now: datetime,
        live: bool | None,
    ) -> int | None:
        """Write the next version if the row is at `expected`; return it, or None if not.

        `kind` None keeps the kind; `live` True matches only a live row, False only a
        tombstone, None either.
        """
        where = [self._where(), memory.c.version == expected]
        if live is not None:
            where.append(memory.c.value.is_not(None) if live else memory.c.value.is_(None))
        values: dict[str, Any] = {
            "value": text,
            "version": memory.c.version + 1,
            "updated_at": now,
            "updated_by": writer,
        }
        if kind is not None:
            values["kind"] = kind
        stmt = sa.update(memory).where(*where).values(**values).returning(memory.c.version)
        new: int | None = (self.conn.execute(stmt)).scalar()
        return new

    def _written(
        self, kind: MemoryKind, text: str, version: int, writer: str, now: datetime
    ) -> MemoryRecord:
        value = _rules.decode_json(text)
        return MemoryRecord(self.tenant_id, self.scope, self.key, kind, value, version, now, writer)

    # -- operations -----------------------------------------------------------------------------

    def create(self, kind: MemoryKind, text: str, writer: str) -> MemoryRecord:
        """Create the key (or revive its tombstone); `VersionConflict` if it exists."""
        now = datetime.now(UTC)
        for _ in range(_ATTEMPTS):
            if self._insert_new(kind, text, writer, now):
                self._audit(writer, "create", 0, 1, now)
                return self._written(kind, text, 1, writer, now)
            row = self.row(lock=True)
            if row is None:
                continue  # deleted with its session since the insert saw it
            if row.value is not None:
                raise _rules.conflict(self.scope, self.key, expected=None, current=_record(row))
            new = self._update(
                expected=row.version, kind=kind, text=text, writer=writer, now=now, live=False
            )
            if new is not None:
                self._audit(writer, "create", row.version, new, now)
                return self._written(kind, text, new, writer, now)
        raise StateError(f"creating memory key {self.key!r} in {self.scope} kept racing a delete")

    def replace(
        self,
        expected: int,
        kind: MemoryKind,
        text: str,
        writer: str,
        operation: MemoryOperation = "put",
    ) -> MemoryRecord:
        """Write a new value if the key is at `expected`; `VersionConflict` if not."""
        now = datetime.now(UTC)
        new = self._update(
            expected=expected, kind=kind, text=text, writer=writer, now=now, live=True
        )
        if new is None:
            raise _rules.conflict(self.scope, self.key, expected=expected, current=self.live())
        self._audit(writer, operation, expected, new, now)
        return self._written(kind, text, new, writer, now)

    def patch(self, expected: int, patch: Mapping[str, JSONValue], writer: str) -> MemoryRecord:
        """Merge-patch the value at `expected`: read, check, compute, then a conditional write.

        A writer that slips in between the read and the write makes the write match no row:
        a `VersionConflict`, as if it had come first.
        """
        current = self.live()
        if current is None or current.version != expected:
            raise _rules.conflict(self.scope, self.key, expected=expected, current=current)
        value = _rules.patched(current, patch)
        text = _rules.encode_json(value, f"the value of memory key {self.key!r}")
        return self.replace(expected, "json", text, writer, "patch")

    def delete(self, expected: int, writer: str) -> int:
        """Turn the key into a tombstone if it is at `expected`; return the new version."""
        now = datetime.now(UTC)
        new = self._update(
            expected=expected, kind=None, text=None, writer=writer, now=now, live=True
        )
        if new is None:
            raise _rules.conflict(self.scope, self.key, expected=expected, current=self.live())
        self._audit(writer, "delete", expected, new, now)
        return new

    def reduce(
        self,
        operation: MemoryOperation,
        compute: Callable[[MemoryRecord | None], JSONValue],
        writer: str,
    ) -> MemoryRecord:
        """Apply a commutative update (append, increment) under the row lock; never conflicts.

        `compute` gives the new value from the current record (None: the key does not exist).
        """
        now = datetime.now(UTC)
        for _ in range(_ATTEMPTS):
            row = self.row(lock=True)
            if row is None:
                text = _rules.encode_json(compute(None), f"the value of memory key {self.key!r}")
                if self._insert_new("json", text, writer, now):
                    self._audit(writer, operation, 0, 1, now)
                    return self._written("json", text, 1, writer, now)
                continue  # a concurrent first write created it: lock that row and go again
            current = None if row.value is None else _record(row)
            text = _rules.encode_json(compute(current), f"the value of memory key {self.key!r}")
            new = self._update(
                expected=row.version, kind="json", text=text, writer=writer, now=now, live=None
            )
            if new is not None:
                self._audit(writer, operation, row.version, new, now)
                return self._written("json", text, new, writer, now)
        raise StateError(
            f"{operation} of memory key {self.key!r} in {self.scope} lost its row lock "
            f"{_ATTEMPTS} times"
        )
