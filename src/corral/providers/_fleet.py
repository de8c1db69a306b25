"""Provider rate limits shared by a fleet of servers through Redis.

Each server's `RateLimiter` keeps its callers in order and its own concurrency cap; with a fleet,
what the provider counts (requests and tokens per minute, and the pause after a 429) lives in
Redis, so ten replicas share one budget instead of each spending the whole of it. Three Lua
scripts keep every change atomic, on Redis's clock (`TIME`), so the replicas' clocks never need
to agree:

- `reserve`: refill the shared buckets for the time passed, and if the request (and its
  estimated tokens) fits and no pause runs, spend it; otherwise say how long to wait;
- `pause`: after a 429, stop every replica until the Retry-After has passed, and empty the
  request bucket so the fleet resumes at the rate, not in a burst;
- `refund`: correct the tokens a call was charged once its usage is known.

The buckets follow `TokenBucket`'s rules exactly (burst capacity, debt for calls larger than it,
nothing earned during a pause); each key expires after a minute of disuse. If Redis cannot be
reached a limiter falls back to its own buckets for that call and says so in the log (at most
every 30 s): the provider's own 429s still protect it, and no model call fails because the
coordinator did.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from corral.errors import UsageError
from corral.providers._ratelimit import RateLimits, bucket_shape

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisFleet"]

logger = logging.getLogger(__name__)

_PREFIX = "corral:limits:"
_TTL_MS = 60_000
_WARN_EVERY_S = 30.0

# Shared by the scripts: read a bucket ("rpm" or "tpm") refilled up to now.
_LEVEL = """
local function level(name, rate, cap, now)
  local lv = tonumber(redis.call('HGET', KEYS[1], name .. ':level') or cap)
  local up = tonumber(redis.call('HGET', KEYS[1], name .. ':updated') or now)
  if now > up then
    lv = math.min(cap, lv + (now - up) * rate)
    up = now
  end
  return lv, up
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
-- Keep the key `ttl_ms` from now, and never less than a pause still running.
local function keep(ttl_ms)
  local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until') or 0)
  redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ttl_ms), math.ceil((paused - now) * 1000)))
end
"""

# ARGV: rpm rate/s, rpm capacity, tpm rate/s, tpm capacity (0 rate: no such limit), tokens, ttl.
# Returns "0 0" when the request was admitted (and spent), else "WAIT PAUSE": the seconds to
# wait, and of them the pause after a 429. Strings: Lua numbers come back as integers.
_RESERVE = (
    _LEVEL
    + """
local rpm_rate, rpm_cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local tpm_rate, tpm_cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = tonumber(ARGV[5])
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until') or 0)
local wait = math.max(0, paused - now)
local rl, ru, tl, tu
if rpm_rate > 0 then
  rl, ru = level('rpm', rpm_rate, rpm_cap, now)
  local missing = math.min(1, rpm_cap) - rl
  if missing > 1e-9 then wait = math.max(wait, missing / rpm_rate) end
end
if tpm_rate > 0 then
  tl, tu = level('tpm', tpm_rate, tpm_cap, now)
  local missing = math.min(tokens, tpm_cap) - tl
  if missing > 1e-9 then wait = math.max(wait, missing / tpm_rate) end
end
if wait > 0 then return tostring(wait) .. ' ' .. tostring(math.max(0, paused - now)) end
if rpm_rate > 0 then
  redis.call('HSET', KEYS[1], 'rpm:level', tostring(rl - 1), 'rpm:updated', tostring(ru))
end
if tpm_rate > 0 then
  redis.call('HSET', KEYS[1], 'tpm:level', tostring(tl - tokens), 'tpm:updated', tostring(tu))
end
keep(ARGV[6])
return '0 0'
"""
)

# ARGV: pause seconds, rpm rate/s, rpm capacity, ttl ms. Returns the pause's end, on Redis time.
_PAUSE = (
    _LEVEL
    + """
local pause_end = now + tonumber(ARGV[1])
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until') or 0)
pause_end = math.max(pause_end, paused)
redis.call('HSET', KEYS[1], 'paused_until', tostring(pause_end))
local rpm_rate, rpm_cap = tonumber(ARGV[2]), tonumber(ARGV[3])
if rpm_rate > 0 then
  local rl, ru = level('rpm', rpm_rate, rpm_cap, now)
  redis.call('HSET', KEYS[1], 'rpm:level', tostring(math.min(rl, 0)),
             'rpm:updated', tostring(math.max(ru, pause_end)))
end
keep(ARGV[4])
return tostring(pause_end)
"""
)

# ARGV: tokens to give back (negative: to spend), tpm rate/s, tpm capacity, ttl ms.
_REFUND = (
    _LEVEL
    + """
local tpm_rate, tpm_cap = tonumber(ARGV[2]), tonumber(ARGV[3])
local tl, tu = level('tpm', tpm_rate, tpm_cap, now)
tl = math.min(tpm_cap, tl + tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'tpm:level', tostring(tl), 'tpm:updated', tostring(tu))
keep(ARGV[4])
return tostring(tl)
"""
)


def _rates(limits: RateLimits) -> tuple[float, float, float, float]:
    """Return the rpm and tpm buckets' rate per second and capacity (0, 0: no such limit)."""
    rpm = bucket_shape(limits.rpm, 1.0 if limits.rpm_burst is None else limits.rpm_burst)
    tpm = bucket_shape(limits.tpm, limits.tpm_burst)
    return (*(rpm or (0.0, 0.0)), *(tpm or (0.0, 0.0)))


class RedisFleet:
    """The shared side of every limiter of a process: its buckets and pauses in Redis.

    Args:
        redis: A `redis.asyncio.Redis` client (its pool is shared by every limiter).
        namespace: Prefix of the keys, so that fleets sharing one Redis stay apart.

    Use `RedisFleet.connect(url)` to make one; `aclose()` closes the client it made.
    """

    def __init__(self, redis: Redis, *, namespace: str = "", owns_client: bool = False) -> None:
        self._redis = redis
        self._prefix = f"{_PREFIX}{namespace}:" if namespace else _PREFIX
        self._owns_client = owns_client
        self._reserve = redis.register_script(_RESERVE)
        self._pause = redis.register_script(_PAUSE)
        self._refund = redis.register_script(_REFUND)
        self.failures = 0
        """Calls that could not reach Redis (the limiter used its own buckets instead)."""
        self._warned_at = -_WARN_EVERY_S

    @classmethod
    async def connect(cls, url: str, *, namespace: str = "", timeout_s: float = 2.0) -> RedisFleet:
        """Connect to Redis at `url` and check it answers.

        Raises:
            UsageError: the URL is malformed, Redis does not answer, or the redis package is
                missing (the `redis` extra).
        """
        try:
            from redis.asyncio import Redis
        except ImportError as exc:
            raise UsageError(
                "a Redis URL needs the redis package: pip install 'corral[redis]'"
            ) from exc
        try:
            client = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        except ValueError as exc:
            raise UsageError(f"invalid Redis URL {url!r}: {exc}") from exc
        try:
            await client.ping()
        except Exception as exc:
            await client.aclose()
            raise UsageError(f"Redis at {url!r} does not answer: {exc}") from exc
        return cls(client, namespace=namespace, owns_client=True)

    @property
    def redis(self) -> Redis:
        """The Redis client (other coordination of the fleet shares its pool)."""
        return self._redis

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def reserve(
        self, key: str, tokens: int, limits: RateLimits
    ) -> tuple[float, float] | None:
        """Spend one request and `tokens` if they fit now; return (wait, of which paused) in s.

        (0, 0): admitted. None: Redis could not be reached (the caller uses its own buckets).
        """
        answer = await self._call(self._reserve, key, [*_rates(limits), tokens, _TTL_MS])
        if answer is None:
            return None
        wait, paused = answer.split()
        return float(wait), float(paused)

    async def pause(self, key: str, seconds: float, limits: RateLimits) -> None:
        """Pause `key` for every replica for `seconds` (a longer pause already set stays)."""
        rpm_rate, rpm_cap, _, _ = _rates(limits)
        await self._call(self._pause, key, [seconds, rpm_rate, rpm_cap, _TTL_MS])

    async def refund(self, key: str, tokens: float, limits: RateLimits) -> None:
        """Give `tokens` back to the shared tokens-per-minute bucket (negative: spend them)."""
        _, _, tpm_rate, tpm_cap = _rates(limits)
        if tpm_rate > 0 and tokens:
            await self._call(self._refund, key, [tokens, tpm_rate, tpm_cap, _TTL_MS])

    async def _call(self, script: Any, key: str, args: list[float | int]) -> str | None:
        try:
            answer = await script(keys=[self._key(key)], args=args)
        except Exception as exc:  # Redis down or slow: this call goes by local limits
            self.failures += 1
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY_S:
                self._warned_at = now
                logger.warning(
                    "provider rate limits: Redis failed (%s: %s); limiting this server alone "
                    "until it answers",
                    type(exc).__name__,
                    exc,
                )
            return None
        return answer.decode() if isinstance(answer, bytes) else str(answer)

    async def aclose(self) -> None:
        """Close the Redis client if this fleet made it. Idempotent."""
        if self._owns_client:
            self._owns_client = False
            await self._redis.aclose()
