"""Create the store's tables: tenants, API keys, sessions, messages, requests, memory, audit.

Revision ID: 0001
Revises:
Create Date: 2026-05-01

Written out in full rather than from `corral.state._tables`: a migration is a record of what
was applied, and must not change when the module does.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.String(128)
_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create every table."""
    op.create_table(
        "tenants",
        sa.Column("id", _ID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("revoked_at", _WHEN, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_api_keys_tenant_id_tenants",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])
    op.create_table(
        "sessions",
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("id", _ID, nullable=False),
        sa.Column("meta", sa.Text(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_sessions"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_sessions_tenant_id_tenants",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "messages",
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("session_id", _ID, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("request_id", _ID, nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "session_id", "seq", name="pk_messages"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "session_id"],
            ["sessions.tenant_id", "sessions.id"],
            name="fk_messages_tenant_id_session_id_sessions",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "requests",
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("id", _ID, nullable=False),
        sa.Column("session_id", _ID, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("finished_at", _WHEN, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_requests"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "session_id"],
            ["sessions.tenant_id", "sessions.id"],
            name="fk_requests_tenant_id_session_id_sessions",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "tenant_id", "idempotency_key", name="uq_requests_tenant_id_idempotency_key"
        ),
    )
    op.create_index("ix_requests_tenant_id_session_id", "requests", ["tenant_id", "session_id"])
    op.create_table(
        "memory",
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("scope", sa.String(140), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", _WHEN, nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "scope", "key", name="pk_memory"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_memory_tenant_id_tenants",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("version >= 1", name="ck_memory_version_positive"),
        sa.CheckConstraint("kind IN ('json', 'text')", name="ck_memory_kind_known"),
    )
    op.create_table(
        "memory_audit",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("scope", sa.String(140), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("writer", sa.String(200), nullable=False),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.Column("base_version", sa.Integer(), nullable=False),
        sa.Column("new_version", sa.Integer(), nullable=False),
        sa.Column("at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_memory_audit"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_memory_audit_tenant_id_tenants",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_memory_audit_tenant_id_scope_key_id",
        "memory_audit",
        ["tenant_id", "scope", "key", "id"],
    )


def downgrade() -> None:
    """Drop every table, dependents first."""
    op.drop_table("memory_audit")
    op.drop_table("memory")
    op.drop_table("requests")
    op.drop_table("messages")
    op.drop_table("sessions")
    op.drop_table("api_keys")
    op.drop_table("tenants")
