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
import time
from collections import OrderedDict

__all__ = ["KeyCache", "hash_key", "new_key", "parse_key", "verify_key"]

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


class KeyCache:
    """Verified keys, trusted for `ttl_s` without a database read; bounded, least recent out.

    Entries are keyed by the key's hash, so no plaintext key outlives the request that sent it.
    Revoking through the same store forgets the key at once; a key revoked elsewhere (another
    process, `corral keys revoke`) stops working within `ttl_s`. Only valid keys are cached: an
    unknown key costs a read every time, as it would without the cache.
    """

    __slots__ = ("_entries", "_max_entries", "_ttl_s", "generation")

    def __init__(self, ttl_s: float, *, max_entries: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, str, object]] = OrderedDict()
        self.generation = 0
        """Counts revocations: a read that began before one must not cache what it found."""

    def get(self, key: str) -> object | None:
        """Return the value cached for `key` if it is still fresh, else None."""
        if self._ttl_s <= 0:
            return None
        digest = hash_key(key)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return entry[2]

    def put(self, key: str, key_id: str, value: object, *, generation: int) -> None:
        """Trust `key` (public id `key_id`) for `ttl_s`.

        Unless a key was revoked since `generation` was read: the value may predate that.
        """
        if self._ttl_s <= 0 or generation != self.generation:
            return
        digest = hash_key(key)
        self._entries[digest] = (time.monotonic() + self._ttl_s, key_id, value)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def forget(self, key_id: str) -> None:
        """Drop the key with this public id (it was revoked)."""
        self.generation += 1
        for digest in [d for d, (_, kid, _) in self._entries.items() if kid == key_id]:
            del self._entries[digest]
