"""Provider limits shared by several servers through the real Redis at 127.0.0.1:6379.

Each "server" is a `LimiterRegistry` with a `RedisFleet` of its own (its own client and pool), as
two replicas would have; a namespace per test keeps tests apart. Real time, small budgets: each
test takes about a second.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import NoReturn

import pytest

from corral._retry import Backoff
from corral.errors import RateLimited, UsageError
from corral.providers import LimiterRegistry, RateLimits, RedisFleet

REDIS_URL = "redis://127.0.0.1:6379/0"
KEY = "openai:gpt-test"


@pytest.fixture
async def servers(
    service_unavailable: Callable[[str, object], NoReturn],
) -> AsyncIterator[tuple[LimiterRegistry, LimiterRegistry]]:
    """Two servers' limiter registries, each with its own Redis client, sharing one namespace."""
    namespace = f"test-{uuid.uuid4().hex}"
    fleets: list[RedisFleet] = []
    try:
        for _ in range(2):
            fleet = await RedisFleet.connect(REDIS_URL, namespace=namespace, timeout_s=1)
            fleets.append(fleet)
    except UsageError as exc:
        for fleet in fleets:
            await fleet.aclose()
        service_unavailable("Redis at 127.0.0.1:6379", exc)
    try:
        yield LimiterRegistry(fleet=fleets[0]), LimiterRegistry(fleet=fleets[1])
    finally:
        for fleet in fleets:
            assert fleet.failures == 0
            await fleet.aclose()


async def test_two_servers_share_one_request_budget(
    servers: tuple[LimiterRegistry, LimiterRegistry],
) -> None:
    limits = RateLimits(rpm=1200)  # 20 per second, one at a time (burst 1)
    admitted: list[float] = []

    async def admit(registry: LimiterRegistry) -> None:
        await registry.limiter(KEY, limits).admit(10)
        admitted.append(time.monotonic())

    started = time.monotonic()
    async with asyncio.timeout(10):
        await asyncio.gather(*(admit(servers[i % 2]) for i in range(20)))
    # Each server alone would let its 10 leave in ~0.45 s; sharing the budget, the 20 take
    # ~0.95 s, and no half second sees more than its 10 and the burst.
    assert time.monotonic() - started >= 0.85
    for t in admitted:
        assert sum(1 for u in admitted if t <= u < t + 0.5) <= 11


async def test_a_429_on_one_server_pauses_the_other(
    servers: tuple[LimiterRegistry, LimiterRegistry],
) -> None:
    limits = RateLimits(backoff=Backoff(attempts=3, base_s=0.1, max_s=2.0))
    one, other = (s.limiter(KEY, limits) for s in servers)
    assert await one.rate_limited(0.4) == 0.4
    started = time.monotonic()
    await other.admit(10)
    assert time.monotonic() - started >= 0.3
    # A pause longer than the longest backoff fails fast on every server, as it does locally.
    await one.rate_limited(30)
    with pytest.raises(RateLimited, match="paused") as caught:
        await other.admit(10)
    assert caught.value.retry_after_s is not None
    assert caught.value.retry_after_s > 25


async def test_tokens_given_back_on_one_server_serve_the_other(
    servers: tuple[LimiterRegistry, LimiterRegistry],
) -> None:
    limits = RateLimits(tpm=600, tpm_burst=100)  # 10 tokens per second, 100 at once
    one, other = (s.limiter(KEY, limits) for s in servers)
    await one.admit(100)  # the shared bucket is empty now: 50 more would take 5 s
    fleet = servers[1].fleet
    assert fleet is not None
    probe = await fleet.reserve(KEY, 50, limits)  # asks, and spends nothing when refused
    assert probe is not None
    assert probe[0] > 4
    await one.settled(100, 20)  # the call used 20: 80 go back, for both servers
    started = time.monotonic()
    async with asyncio.timeout(2):
        await other.admit(50)
    assert time.monotonic() - started < 1.0


async def test_with_redis_down_each_server_goes_by_its_own_limits() -> None:
    from redis.asyncio import Redis

    # A port nothing listens on: every call fails at once, and the limiter goes on alone.
    client = Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.5)
    fleet = RedisFleet(client, namespace="down", owns_client=True)
    limiter = LimiterRegistry(fleet=fleet).limiter(KEY, RateLimits(rpm=600))
    started = time.monotonic()
    for _ in range(3):
        await limiter.admit(1)
    await limiter.rate_limited(0.01)
    await limiter.settled(1, 1)
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 2.0  # its own bucket: 10 per second, one at a time
    assert fleet.failures >= 3
    await fleet.aclose()


async def test_an_unreachable_or_malformed_url_is_named() -> None:
    with pytest.raises(UsageError, match=r"127\.0\.0\.1:9"):
        await RedisFleet.connect("redis://127.0.0.1:9/0", timeout_s=0.5)
    with pytest.raises(UsageError, match="invalid Redis URL"):
        await RedisFleet.connect("http://not-redis")


async def test_a_long_pause_outlives_the_keys_idle_expiry(
    servers: tuple[LimiterRegistry, LimiterRegistry],
) -> None:
    fleet = servers[0].fleet
    assert isinstance(fleet, RedisFleet)
    limits = RateLimits(rpm=60, tpm=600)
    await fleet.pause(KEY, 90, limits)
    await fleet.refund(KEY, 10, limits)  # touches the key: its expiry must still cover the pause
    ttl_ms = await fleet.redis.pttl(fleet._key(KEY))
    assert ttl_ms > 85_000
    reserved = await fleet.reserve(KEY, 1, limits)
    assert reserved is not None
    assert reserved[1] > 85  # still paused, and said to be
