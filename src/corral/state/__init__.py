"""Persistence: tenants, API keys, sessions, messages, requests, and versioned shared memory.

`Store` is the interface; `MemoryStore` keeps everything in the process (tests, demos), and
`SqlStore` keeps it in SQLite or PostgreSQL. `upgrade(url)` migrates a database to the newest
schema. `memory_tools` turns a scope of memory into tools for agents.
"""

from corral.state._migrate import upgrade
from corral.state._rules import session_scope
from corral.state._sql import SqlStore
from corral.state.base import (
    ApiKeyRecord,
    AuditEntry,
    MemoryKind,
    MemoryOperation,
    MemoryRecord,
    RequestRecord,
    RequestStatus,
    SessionRecord,
    Store,
    StoredMessage,
    StoreStatistics,
    Tenant,
)
from corral.state.memory import MemoryStore
from corral.state.tools import memory_tools, register_memory_tools

__all__ = [
    "ApiKeyRecord",
    "AuditEntry",
    "MemoryKind",
    "MemoryOperation",
    "MemoryRecord",
    "MemoryStore",
    "RequestRecord",
    "RequestStatus",
    "SessionRecord",
    "SqlStore",
    "Store",
    "StoreStatistics",
    "StoredMessage",
    "Tenant",
    "memory_tools",
    "register_memory_tools",
    "session_scope",
    "upgrade",
]
