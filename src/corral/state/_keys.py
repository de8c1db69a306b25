"""API keys: ``crl_<id>_<secret>``, stored as a SHA-256 hash, looked up by the public id.

The secret is 32 random bytes, so a plain SHA-256 is enough: a slow password hash protects
guessable secrets, and these are not guessable. The id is public (it names the key in logs and
listings) and makes lookup one indexed read; the hash comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

__all__ = ["hash_key", "new_key", "parse_key", "verify_key"]

_PREFIX = "crl"
_KEY = re.compile(r"crl_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


def new_key() -> tuple[str, str, str]:
    """Return a fresh key, its public id and the hash to store."""
    key_id = secrets.token_hex(8)
    key = f"{_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return key, key_id, hash_key(key)


def hash_key(key: str) -> str:
    """Return the hex SHA-256 of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key(key: object) -> str | None:
    """Return the public id of a well-formed key, else None."""
    if not isinstance(key, str):
        return None
    match = _KEY.fullmatch(key)
    return match.group(1) if match else None


def verify_key(key: str, stored_hash: str) -> bool:
    """Whether `key` hashes to `stored_hash`, compared in constant time."""
    return hmac.compare_digest(hash_key(key), stored_hash)
