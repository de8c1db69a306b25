"""The SQL schema, as SQLAlchemy Core tables; the migrations create it, this module reads it.

Every table's key starts with `tenant_id`, so no query can reach another tenant's rows by id
alone, and two tenants may use the same session or request ids without learning of each other.
JSON is stored as text that `_rules.encode_json` wrote: identical on SQLite and PostgreSQL, and
read back exactly as written (no JSONB key reordering or number normalising).

A test compares this module with the head migration: they must describe the same schema.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "VERSION_TABLE",
    "api_keys",
    "memory",
    "memory_audit",
    "messages",
    "metadata",
    "requests",
    "sessions",
    "tenants",
]

VERSION_TABLE = "corral_alembic_version"
"""Alembic's bookkeeping table, named for corral so it cannot clash with an application's own."""

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_ID = sa.String(128)
_WHEN = sa.DateTime(timezone=True)
# SQLite makes only an INTEGER PRIMARY KEY an auto-incrementing rowid, not a BIGINT one.
_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", _WHEN, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column(
        "tenant_id",
        _ID,
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("created_at", _WHEN, nullable=False),
    sa.Column("revoked_at", _WHEN, nullable=True),
    sa.Index(None, "tenant_id"),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("tenant_id", _ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("id", _ID, primary_key=True),
    sa.Column("meta", sa.Text, nullable=False),
    # The sequence number of the newest message. Appends bump it in the transaction that
    # inserts the messages: the row lock serialises appends to one session, and a rolled-back
    # append gives its numbers back, so numbers stay gap-free.
    sa.Column("last_seq", sa.Integer, nullable=False),
    sa.Column("created_at", _WHEN, nullable=False),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("tenant_id", _ID, primary_key=True),
    sa.Column("session_id", _ID, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("request_id", _ID, nullable=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", _WHEN, nullable=False),
    sa.ForeignKeyConstraint(
        ["tenant_id", "session_id"], ["sessions.tenant_id", "sessions.id"], ondelete="CASCADE"
    ),
)

requests = sa.Table(
    "requests",
    metadata,
    sa.Column("tenant_id", _ID, primary_key=True),
    sa.Column("id", _ID, primary_key=True),
    sa.Column("session_id", _ID, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("created_at", _WHEN, nullable=False),
    sa.Column("finished_at", _WHEN, nullable=True),
    sa.ForeignKeyConstraint(
        ["tenant_id", "session_id"], ["sessions.tenant_id", "sessions.id"], ondelete="CASCADE"
    ),
    # NULLs are distinct in a unique constraint: requests without a key never collide.
    sa.UniqueConstraint("tenant_id", "idempotency_key"),
    sa.Index(None, "tenant_id", "session_id"),
)

memory = sa.Table(
    "memory",
    metadata,
    sa.Column("tenant_id", _ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("scope", sa.String(140), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("kind", sa.String(8), nullable=False),
    # NULL once deleted: the row stays as a tombstone so the key's versions never repeat.
    sa.Column("value", sa.Text, nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", _WHEN, nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
    sa.CheckConstraint("version >= 1", name="version_positive"),
    sa.CheckConstraint("kind IN ('json', 'text')", name="kind_known"),
)

memory_audit = sa.Table(
    "memory_audit",
    metadata,
    sa.Column("id", _SERIAL, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", _ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("scope", sa.String(140), nullable=False),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("writer", sa.String(200), nullable=False),
    sa.Column("operation", sa.String(16), nullable=False),
    sa.Column("base_version", sa.Integer, nullable=False),
    sa.Column("new_version", sa.Integer, nullable=False),
    sa.Column("at", _WHEN, nullable=False),
    sa.Index(None, "tenant_id", "scope", "key", "id"),
)
